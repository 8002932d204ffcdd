"""Run configuration: one frozen dataclass, validated once at the edge.

Every field is a plain str/int/float/bool so the same object maps 1:1 to Flower's run config
(`[tool.flwr.app.config]`), to a Flower `ConfigRecord` sent to sites, and to CLI flags. Each field
carries its help text and what it accepts in `metadata`; the CLI and `--help` are generated from it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from common.partition_spec import PARTITION_HELP, PartitionSpec, parse_partition
from common.spacing_spec import parse_spacing
from common.tracking.spec import TRACK_HELP, parse_track

DATASETS = ("synthetic", "medmnist", "dicom", "msd")
TASKS = ("classification", "segmentation")
VOLUME_MODES = ("3d", "slices")
MODELS = (
    "resnet10", "resnet18", "resnet34", "resnet50", "densenet121", "cnn",
    # segmentation (U-Net family)
    "unet", "basicunet", "attentionunet", "unetplusplus", "vnet", "segresnet",
)
NORMS = ("group", "instance", "batch")
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedmedian", "fedtrimmedavg", "krum")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine", "step")
STEMS = ("stride1", "stride2", "imagenet")
LOSSES = ("ce", "weighted_ce", "focal", "dice", "dice_ce", "logit_adjusted")
BASELINES = ("local", "pooled")
DP_MODES = ("off", "sample", "client")
ACCOUNTANTS = ("rdp", "prv")
GRAD_SAMPLE_MODES = ("auto", "hooks", "ew", "functorch")
PERSONALIZE_MODES = ("off", "finetune", "local-norm")


# Settings a resumed run may change; everything else must stay what the run started with.
RESUMABLE_CHANGES = ("rounds", "round_timeout", "min_sites", "min_site_fraction", "resume",
                     "output_dir", "track")


class ConfigError(ValueError):
    """A configuration value is unknown, malformed or out of range (message says which)."""


def _opt(default: Any, help: str, *, choices: tuple | None = None,
         lo: float | None = None, hi: float | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, "lo": lo, "hi": hi})


@dataclass(frozen=True)
class RunConfig:
    """Everything a federated run needs. Defaults give the README's quick demo."""

    # --- data ---
    dataset: str = _opt("synthetic", "dataset name", choices=DATASETS)
    data_path: str = _opt("", "medmnist: path to an official .npz file, or a subset name "
                              "(e.g. pneumoniamnist) to download into the cache; dicom: a folder "
                              "of DICOM files with labels.csv; msd: a Medical Segmentation "
                              "Decathlon folder (dataset.json, imagesTr/, labelsTr/); unused for "
                              "synthetic")
    task: str = _opt("classification", "what the network predicts: one label per image, or a "
                                       "mask; on the command line segmentation also brings its "
                                       "own defaults for options not given: --model unet "
                                       "--optimizer adam --lr 0.01 --batch-size 8 --loss "
                                       "dice_ce (weighted_ce with --spatial-dims 3, "
                                       "dice_ce with --dp sample)",
                     choices=TASKS)
    dicom_window: str = _opt("", "DICOM VOI window 'CENTER,WIDTH' in stored units after rescale "
                                 "(HU for CT), e.g. '40,400'; '' = the file's own window, else "
                                 "the image's full range")
    spacing: str = _opt("", "DICOM/NIfTI: resample every image to this pixel spacing in mm, then "
                            "pad/crop it about the centre to the input size, so all sites see "
                            "objects at one physical scale: one number for all axes ('1.0') or "
                            "one per axis ('0.8,0.8' for 2D row,col; '2.5,1,1' for 3D "
                            "slice,row,col); '' = off: stretch each image to the input size")
    strict: bool = _opt(False, "a bad image file (unreadable, not DICOM, no pixels) is fatal; "
                               "default: skip it, name it, and count it in the report")
    cache_dir: str = _opt("", "folder for preprocessed DICOM/NIfTI arrays, keyed by file content "
                              "hash; '' = ~/.cache/fedclinic/arrays")
    image_size: int = _opt(28, "synthetic image side in pixels (medmnist: read from the file)",
                           choices=(28, 64))
    spatial_dims: int = _opt(2, "synthetic images: 2 (slices) or 3 (volumes)", choices=(2, 3))
    volume_mode: str = _opt("3d", "3D data: train on whole volumes (3d) or slice by slice with "
                                  "a 2D network (slices)", choices=VOLUME_MODES)
    augment: str = _opt("", "comma-separated training augmentations, drawn per sample (for "
                            "segmentation applied identically to image and mask): flip (every "
                            "axis), hflip (left-right only), rotate, crop (shift <= 1/10 side), "
                            "elastic, intensity ('' for none)")
    roi_size: int = _opt(0, "3D segmentation inference: sliding-window cube side in voxels; 0 = "
                            "the whole volume at once", lo=0, hi=1024)
    num_samples: int = _opt(2400, "synthetic: number of images generated (train+val pool)",
                            lo=20, hi=1_000_000)
    # --- federation layout ---
    sites: int = _opt(4, "number of simulated hospitals", lo=1, hi=1000)
    partition: str = _opt("iid", PARTITION_HELP)
    val_fraction: float = _opt(0.1, "share of each site's data held out for validation", lo=0.0, hi=0.5)
    test_fraction: float = _opt(0.2, "share of each site's data held out as its own test split",
                                lo=0.05, hi=0.5)
    # --- model ---
    model: str = _opt("resnet18", "network from the model registry", choices=MODELS)
    norm: str = _opt("group", "normalisation layers (group/instance work with DP-SGD)", choices=NORMS)
    width: int = _opt(16, "channels of the first stage; later stages scale from it", lo=4, hi=512)
    # --- local training ---
    local_epochs: int = _opt(2, "local epochs per round at each site", lo=1, hi=1000)
    batch_size: int = _opt(16, "mini-batch size", lo=1, hi=65536)
    lr: float = _opt(0.02, "local learning rate", lo=1e-7, hi=10.0)
    optimizer: str = _opt("sgd", "local optimiser (sgd uses momentum)", choices=OPTIMIZERS)
    lr_schedule: str = _opt("constant", "learning-rate schedule over the whole run (rounds x "
                                        "local epochs; a site follows it by the round it is in): "
                                        "constant, cosine decay to ~0, or step (x0.1 at 1/2 and "
                                        "3/4), after the warm-up", choices=LR_SCHEDULES)
    warmup_fraction: float = _opt(0.0, "share of the run over which the learning rate rises "
                                       "linearly from ~0 to lr", lo=0.0, hi=0.5)
    grad_clip: float = _opt(0.0, "without sample-level DP: clip each batch's gradient to this "
                                 "total L2 norm (0 = off); DP-SGD clips per sample with "
                                 "max_grad_norm instead", lo=0.0, hi=1e6)
    momentum: float = _opt(0.9, "SGD momentum", lo=0.0, hi=0.999)
    weight_decay: float = _opt(0.0, "L2 weight decay", lo=0.0, hi=1.0)
    loss: str = _opt("ce", "loss: cross-entropy, class-weighted CE, focal; segmentation also "
                           "dice and dice_ce; classification also logit_adjusted (CE against "
                           "the training split's own label prior, for label-skewed sites)",
                     choices=LOSSES)
    focal_gamma: float = _opt(2.0, "focal loss gamma", lo=0.0, hi=10.0)
    # --- server ---
    rounds: int = _opt(5, "federated rounds", lo=1, hi=100_000)
    strategy: str = _opt("fedavg", "aggregation strategy", choices=STRATEGIES)
    fraction_train: float = _opt(1.0, "fraction of sites sampled each round", lo=0.01, hi=1.0)
    fraction_evaluate: float = _opt(1.0, "fraction of sites asked to evaluate each round; below "
                                        "1 the simulator scores the final model on every "
                                        "site itself", lo=0.01, hi=1.0)
    proximal_mu: float = _opt(0.01, "FedProx proximal weight mu", lo=0.0, hi=100.0)
    server_lr: float = _opt(0.01, "FedAdam/FedYogi server learning rate (eta)", lo=1e-6, hi=10.0)
    server_tau: float = _opt(1e-3, "FedAdam/FedYogi adaptivity tau: added to the root of the "
                                   "second moment (Flower's default)", lo=1e-9, hi=10.0)
    trim_beta: float = _opt(0.2, "FedTrimmedAvg: fraction cut from each end", lo=0.0, hi=0.49)
    krum_malicious: int = _opt(0, "Krum: number of malicious sites tolerated", lo=0, hi=1000)
    round_timeout: float = _opt(3600.0, "seconds the server waits for a round's replies; sites "
                                        "that have not answered by then are excluded from the "
                                        "round", lo=1.0, hi=1e7)
    min_sites: int = _opt(1, "quorum: a round aggregates only if at least this many sites "
                             "answered successfully", lo=1, hi=100_000)
    min_site_fraction: float = _opt(0.0, "quorum as a fraction of the sites asked in the round "
                                         "(the larger of the two quorums applies)", lo=0.0,
                                    hi=1.0)
    # --- model selection and operating point (validation data only) ---
    patience: int = _opt(0, "early stopping: end the run after this many rounds in a row "
                            "without a better validation score (the sites' sample-weighted "
                            "validation loss, or AUC where the loss stays at the sites); "
                            "0 = off", lo=0, hi=100_000)
    target_sensitivity: float = _opt(0.0, "binary tasks: the decision threshold is the most "
                                          "specific one with at least this sensitivity for "
                                          "the positive class on the validation data; 0 = "
                                          "Youden's J (sensitivity + specificity - 1 largest)",
                                     lo=0.0, hi=1.0)
    positive_class: str = _opt("", "binary tasks: the class that is the finding (its name or "
                                   "index) for sensitivity and specificity; '' = from the "
                                   "dataset's label names (the class that is not 'normal'/"
                                   "'benign'), else label 1")
    # --- initialisation and personalisation ---
    init_from: str = _opt("", "start the federation and both baselines from this model file "
                              "instead of a seeded random init: a fedclinic final_model.pt / "
                              "best_model.pt / checkpoint, or a plain torch state dict (e.g. "
                              "pretrained on public data); a head whose only difference is the "
                              "number of classes is re-initialised; '' = off")
    personalize: str = _opt("off", "per-site models after (finetune) or during (local-norm) the "
                                   "federation: finetune = each site fine-tunes the chosen "
                                   "global model for finetune_epochs epochs on its train split, "
                                   "keeping the epoch with the lowest loss on its own val split; "
                                   "local-norm = FedBN: the normalisation layers' parameters stay "
                                   "at each site and are never sent or aggregated",
                            choices=PERSONALIZE_MODES)
    finetune_epochs: int = _opt(3, "personalize=finetune: most epochs of fine-tuning at each "
                                   "site (the epoch kept, 0 included, is chosen on its val split)",
                                lo=1, hi=1000)
    # --- differential privacy ---
    dp: str = _opt("off", "differential privacy: off, sample (DP-SGD at each site, protects each "
                          "patient), client (central DP on site updates)", choices=DP_MODES)
    target_epsilon: float = _opt(8.0, "privacy budget epsilon for the whole run, per site (used "
                                      "when noise_multiplier is 0)", lo=0.01, hi=1e6)
    noise_multiplier: float = _opt(0.0, "DP-SGD noise multiplier sigma; 0 = calibrate it so the "
                                        "whole planned run spends exactly target_epsilon", lo=0.0,
                                   hi=1e4)
    delta: float = _opt(0.0, "DP delta; 0 = 1/(10 n) with n the site's training-set size", lo=0.0,
                        hi=0.1)
    max_grad_norm: float = _opt(1.0, "per-sample gradient clipping norm C", lo=1e-6, hi=1e6)
    ema_decay: float = _opt(0.0, "dp=sample: a site sends the exponential moving average of its "
                                 "DP-SGD iterates over the round (decay per step; 0 = the last "
                                 "iterate). Post-processing: no privacy cost", lo=0.0, hi=0.9999)
    aug_multiplicity: int = _opt(1, "dp=sample with --augment: each record's gradient is the "
                                    "mean over this many augmented copies of it, taken before "
                                    "clipping (augmentation multiplicity, De et al. 2022): the "
                                    "same privacy, this many times the compute of a step; 1 = "
                                    "one copy", lo=1, hi=64)
    dp_class_balance: float = _opt(0.0, "dp=sample, classification: after clipping, each "
                                        "record's gradient is weighted by (p_min / p_class) ** "
                                        "this, p from the site's noised class counts (weights "
                                        "<= 1: the sensitivity stays max_grad_norm); 1 = the "
                                        "classes count equally, 0 = off", lo=0.0, hi=1.0)
    accountant: str = _opt("rdp", "privacy accountant (Opacus)", choices=ACCOUNTANTS)
    grad_sample_mode: str = _opt("auto", "Opacus per-sample gradient mode; auto = the fastest "
                                         "correct one for the model", choices=GRAD_SAMPLE_MODES)
    # --- run ---
    baselines: str = _opt("local,pooled", "comma-separated baselines trained with the same model "
                                          "and compute ('' for none)")
    seed: int = _opt(0, "seed for data, partition, model init and training", lo=0, hi=2**31 - 1)
    output_dir: str = _opt("runs", "parent folder of run directories")
    resume: str = _opt("", "deployment: name of a run directory on the server to continue after "
                           "its last complete round ('' = start a new run)")
    track: str = _opt("", TRACK_HELP)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        parse_partition(self.partition)
        parse_spacing(self.spacing, self.spatial_dims)
        parse_track(self.track)
        unknown = set(self.baseline_list) - set(BASELINES)
        if unknown:
            raise ConfigError(f"baselines={self.baselines!r}: unknown {sorted(unknown)}; "
                              f"allowed: {', '.join(BASELINES)}")
        if self.ema_decay > 0 and self.dp != "sample":
            raise ConfigError(f"ema_decay={self.ema_decay:g} averages DP-SGD iterates; it needs "
                              f"dp='sample' (got dp={self.dp!r}): set --dp sample or drop "
                              f"--ema-decay")
        if self.aug_multiplicity > 1 and (self.dp != "sample" or not self.augment.strip()):
            raise ConfigError(f"aug_multiplicity={self.aug_multiplicity} averages the gradients "
                              f"of a record's augmented copies inside DP-SGD; it needs "
                              f"dp='sample' and an --augment (got dp={self.dp!r}, "
                              f"augment={self.augment!r})")
        if self.dp_class_balance > 0 and self.dp != "sample":
            raise ConfigError(f"dp_class_balance={self.dp_class_balance:g} weights DP-SGD's "
                              f"clipped gradients; it needs dp='sample' (got dp={self.dp!r}): "
                              f"set --dp sample or drop --dp-class-balance")
        if self.dataset == "medmnist" and not self.data_path:
            raise ConfigError("data_path='' but dataset='medmnist' needs a .npz file path or a "
                              "MedMNIST subset name (e.g. pneumoniamnist)")

    @property
    def partition_spec(self) -> PartitionSpec:
        return parse_partition(self.partition)

    @property
    def baseline_list(self) -> tuple[str, ...]:
        return tuple(b.strip() for b in self.baselines.split(",") if b.strip())

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunConfig":
        """Build from a mapping (CLI, JSON, Flower run config); keys may use '-' or '_'."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in names:
                raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(names)}")
            kwargs[name] = _coerce(names[name], value)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read run config ({exc})") from None
        return cls.from_dict(data)


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Convert strings (CLI, Flower) to the field's type; reject what cannot be converted."""
    kind = type(f.default)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    try:
        if kind is bool:
            if str(value).lower() in ("1", "true", "yes"):
                return True
            if str(value).lower() in ("0", "false", "no"):
                return False
            raise ValueError
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value) if kind is not int else int(float(value))
    except (TypeError, ValueError):
        raise ConfigError(f"{f.name}={value!r}: expected {kind.__name__}") from None


def _check_field(f: dataclasses.Field, value: Any) -> None:
    kind = type(f.default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        if not (kind is float and isinstance(value, int) and not isinstance(value, bool)):
            raise ConfigError(f"{f.name}={value!r}: expected {kind.__name__}")
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        allowed = ", ".join(str(c) for c in meta["choices"])
        raise ConfigError(f"{f.name}={value!r}: not allowed; expected one of {allowed}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ConfigError(f"{f.name}={value!r}: out of range; expected {lo} <= {f.name} <= {hi}")

