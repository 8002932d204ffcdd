"""Classification recipes: pooled training on a MedMNIST train split, scored on its VAL split.

Reproduces the evidence table of docs/recipes.md. Every candidate trains one model on the
official train split (optionally a stratified subset: the small-data rows) with fedclinic's own
loop (`common.training.local.train_local`) and scores it on the official validation split;
the test split is never read. The `yardstick*` rows run ../shared/yardstick/plain_fedavg.py's own
model and loop (imported from that file) on the same data, for the pipeline comparison.

    .venv/bin/python -m bench.recipes --list
    .venv/bin/python -m bench.recipes --only pn-default [--only ...] [--threads 2]
    .venv/bin/python -m bench.recipes --all          # every row, one after the other (hours)

Results are merged into bench/results/recipes.json (one entry per candidate, rerunning a
candidate replaces its entry); one summary line per candidate is printed.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.acquisition import apply_profile, site_profile
from common.config import RunConfig
from common.datasets.base import Dataset, Split
from common.datasets.medmnist import read_npz
from common.models import DEFAULT_INPUT_NORM, DEFAULT_STEM, build_model, count_parameters
from common.task_defaults import CLASSIFICATION_RECIPE
from common.partitions.label_skew import partition_indices
from common.training.local import train_local
from common.training.schedule import round_window
from common.training.prediction import evaluate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "recipes.json"
DATA = ROOT.parent / "shared" / "data" / "medmnist"
YARDSTICK = ROOT.parent / "shared" / "yardstick" / "plain_fedavg.py"
FILES = {"pneumonia": "pneumoniamnist.npz", "adrenal": "adrenalmnist3d.npz"}

# The yardstick's hyper-parameters in RunConfig terms (plain_fedavg.py: train_epochs).
YARD = {"width": 64, "batch_size": 128, "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4,
        "lr_schedule": "constant", "warmup_fraction": 0.0, "augment": ""}


COS = {"lr_schedule": "cosine", "warmup_fraction": 0.1}
RECIPE = {**CLASSIFICATION_RECIPE}      # the classification task defaults (the CLI fills them)
REC = {"width": 32, "batch_size": 64, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
       "lr_schedule": "cosine", "warmup_fraction": 0.1, "augment": ""}
AUG2D = "hflip,crop,rotate,intensity"


@dataclass(frozen=True)
class Candidate:
    """One row of the table: a dataset, RunConfig overrides and the pipeline knobs."""

    dataset: str                      # key of FILES
    epochs: int
    overrides: dict[str, Any] = field(default_factory=dict)
    stem: str = ""                    # '' = build_model's default
    input_norm: str = DEFAULT_INPUT_NORM   # none: [0, 1] as read; pm1: [-1, 1]; zscore
    train_limit: int = 0              # > 0: a stratified subset of the train split this size
    yardstick: bool = False           # plain_fedavg.py's own model and loop
    sites: int = 0                    # > 0: FedAvg over this many Dirichlet(0.5) sites,
                                      # epochs = rounds of one local epoch each
    shift_sites: int = 0              # > 0: the train split cut into this many iid parts, part
                                      # k imaged by `site_profile(k, seed)` (as `iid+shift`);
                                      # val stays unshifted, like the utility bench's test
    note: str = ""


def _c(dataset: str, epochs: int, note: str, **kw: Any) -> Candidate:
    return Candidate(dataset, epochs, note=note, **kw)


SMALL = 546   # BreastMNIST's train size: the regime of the held-out binary subset
CANDIDATES: dict[str, Candidate] = {
    # --- step 1: the pipeline gap, yardstick hyper-parameters, small-data regime ---
    "gap-yardstick": _c("pneumonia", 10, "plain_fedavg.py model+loop, [-1,1], stride-2 stem",
                        yardstick=True, train_limit=SMALL),
    "gap-fc-s1-unit": _c("pneumonia", 10, "fedclinic loop, [0,1], stride-1 stem (old default)",
                         overrides=YARD, stem="stride1", input_norm="none", train_limit=SMALL),
    "gap-fc-s2-unit": _c("pneumonia", 10, "fedclinic loop, [0,1], stride-2 stem",
                         overrides=YARD, stem="stride2", input_norm="none", train_limit=SMALL),
    "gap-fc-s2-pm1": _c("pneumonia", 10, "fedclinic loop, [-1,1], stride-2 stem",
                        overrides=YARD, stem="stride2", input_norm="pm1", train_limit=SMALL),
    "gap-fc-s1-pm1": _c("pneumonia", 10, "fedclinic loop, [-1,1], stride-1 stem",
                        overrides=YARD, stem="stride1", input_norm="pm1", train_limit=SMALL),
    "gap-fc-s2-unit-437": _c("pneumonia", 10, "as gap-fc-s2-unit on 437 images (the 70% a "
                             "5-site split trains on)", overrides=YARD, stem="stride2",
                             input_norm="none", train_limit=437),
    # --- step 2: recipes on the small-data regime (546 images), stride-2 stem, [-1, 1] ---
    "small-zscore": _c("pneumonia", 10, "yardstick h-p, per-image z-score input",
                       overrides=YARD, stem="stride2", input_norm="zscore", train_limit=SMALL),
    "small-cos": _c("pneumonia", 10, "yardstick h-p + warm-up 0.1 + cosine",
                    overrides={**YARD, **COS}, stem="stride2", input_norm="pm1",
                    train_limit=SMALL),
    "small-cos-aug": _c("pneumonia", 10, "small-cos + hflip,crop,rotate,intensity",
                        overrides={**YARD, **COS, "augment": AUG2D}, stem="stride2",
                        input_norm="pm1", train_limit=SMALL),
    "small-cos-lr05": _c("pneumonia", 10, "small-cos at lr 0.05",
                         overrides={**YARD, **COS, "lr": 0.05}, stem="stride2",
                         input_norm="pm1", train_limit=SMALL),
    "small-cos-bs32": _c("pneumonia", 10, "small-cos at batch 32",
                         overrides={**YARD, **COS, "batch_size": 32}, stem="stride2",
                         input_norm="pm1", train_limit=SMALL),
    "small-cos-w32": _c("pneumonia", 10, "small-cos at width 32",
                        overrides={**YARD, **COS, "width": 32}, stem="stride2",
                        input_norm="pm1", train_limit=SMALL),
    # --- candidate recipes: batch 64, lr 0.01, wd 5e-4, warm-up 0.1 + cosine, width 32 ---
    "small-rec": _c("pneumonia", 10, "recipe, z-score input, no augmentation",
                    overrides=REC, stem="stride2", input_norm="zscore", train_limit=SMALL),
    "small-rec-aug": _c("pneumonia", 10, "small-rec + hflip,crop",
                        overrides={**REC, "augment": "hflip,crop"}, stem="stride2",
                        input_norm="zscore", train_limit=SMALL),
    "small-rec-lr05": _c("pneumonia", 10, "small-rec at lr 0.05",
                         overrides={**REC, "lr": 0.05}, stem="stride2", input_norm="zscore",
                         train_limit=SMALL),
    "small-rec-aug-lr05": _c("pneumonia", 10, "small-rec-aug at lr 0.05",
                             overrides={**REC, "lr": 0.05, "augment": "hflip,crop"},
                             stem="stride2", input_norm="zscore", train_limit=SMALL),
    "small-rec-pm1": _c("pneumonia", 10, "small-rec with [-1,1] input",
                        overrides=REC, stem="stride2", input_norm="pm1", train_limit=SMALL),
    "small-rec-wd1e-4": _c("pneumonia", 10, "small-rec at weight decay 1e-4",
                           overrides={**REC, "weight_decay": 1e-4}, stem="stride2",
                           input_norm="zscore", train_limit=SMALL),
    "small-rec-const": _c("pneumonia", 10, "small-rec with a constant lr, no warm-up",
                          overrides={**REC, "lr_schedule": "constant", "warmup_fraction": 0.0},
                          stem="stride2", input_norm="zscore", train_limit=SMALL),
    "small-rec-augfull": _c("pneumonia", 10, "small-rec + hflip,crop,rotate,intensity",
                            overrides={**REC, "augment": AUG2D}, stem="stride2",
                            input_norm="zscore", train_limit=SMALL),
    "small-rec-s1": _c("pneumonia", 10, "small-rec with the stride-1 stem",
                       overrides=REC, stem="stride1", input_norm="zscore", train_limit=SMALL),
    "small-la": _c("pneumonia", 10, "small-rec with the logit-adjusted loss",
                   overrides={**REC, "loss": "logit_adjusted"}, stem="stride2",
                   input_norm="zscore", train_limit=SMALL),
    "small-rec-long": _c("pneumonia", 40, "small-rec for 40 epochs", overrides=REC,
                         stem="stride2", input_norm="zscore", train_limit=SMALL),
    "small-rec-aug-long": _c("pneumonia", 40, "small-rec-aug for 40 epochs",
                             overrides={**REC, "augment": "hflip,crop"}, stem="stride2",
                             input_norm="zscore", train_limit=SMALL),
    "small-default": _c("pneumonia", 10, "what the CLI gives now: the task defaults and "
                        "build_model's defaults", overrides=RECIPE, train_limit=SMALL),
    # --- the whole train split (4708 images) ---
    "pn-default": _c("pneumonia", 5, "what the CLI gives now", overrides=RECIPE),
    "pn-rec-10": _c("pneumonia", 10, "pn-rec for 10 epochs", overrides=REC, stem="stride2",
                    input_norm="zscore"),
    "pn-fed-rec-10": _c("pneumonia", 10, "pn-fed-rec for 10 rounds", overrides=REC,
                        stem="stride2", input_norm="zscore", sites=5),
    "pn-fed-rec-10-lr03": _c("pneumonia", 10, "pn-fed-rec-10 at lr 0.03",
                             overrides={**REC, "lr": 0.03}, stem="stride2",
                             input_norm="zscore", sites=5),
    "pn-fed-rec-10-lr05": _c("pneumonia", 10, "pn-fed-rec-10 at lr 0.05",
                             overrides={**REC, "lr": 0.05}, stem="stride2",
                             input_norm="zscore", sites=5),
    "pn-fed-rec-10-const": _c("pneumonia", 10, "pn-fed-rec-10 at a constant lr, no warm-up",
                              overrides={**REC, "lr_schedule": "constant",
                                         "warmup_fraction": 0.0},
                              stem="stride2", input_norm="zscore", sites=5),
    "pn-fed-old-10": _c("pneumonia", 10, "FedAvg 10 rounds, fedclinic's old defaults",
                        overrides={}, stem="stride1", input_norm="none", sites=5),
    "pn-la-10": _c("pneumonia", 10, "pn-rec-10 with the logit-adjusted loss",
                   overrides={**REC, "loss": "logit_adjusted"}, stem="stride2",
                   input_norm="zscore"),
    "pn-fed-la-10": _c("pneumonia", 10, "pn-fed-rec-10 with the logit-adjusted loss",
                       overrides={**REC, "loss": "logit_adjusted"}, stem="stride2",
                       input_norm="zscore", sites=5),
    "pn-old": _c("pneumonia", 5, "fedclinic's old defaults (w16, batch 16, lr 0.02, [0,1], "
                 "stride-1 stem)", overrides={}, stem="stride1", input_norm="none"),
    "pn-rec": _c("pneumonia", 5, "recipe, z-score input", overrides=REC, stem="stride2",
                 input_norm="zscore"),
    "pn-fed-rec": _c("pneumonia", 5, "FedAvg, 5 Dirichlet(0.5) sites, 5 rounds x 1 epoch, "
                     "recipe", overrides=REC, stem="stride2", input_norm="zscore", sites=5),
    # --- AdrenalMNIST3D (1188 train volumes, 98 val), stride-2 stem (28^3 -> 14^3) ---
    "adr-default": _c("adrenal", 10, "what the CLI gives now", overrides=RECIPE),
    "adr-old-h-p": _c("adrenal", 10, "old h-p (w16, batch 16, lr 0.02, const), [0,1]",
                      overrides={}, stem="stride2", input_norm="none"),
    "adr-rec": _c("adrenal", 10, "recipe, z-score input", overrides=REC, stem="stride2",
                  input_norm="zscore"),
    "adr-rec-pm1": _c("adrenal", 10, "recipe, [-1,1] input", overrides=REC, stem="stride2",
                      input_norm="pm1"),
    "adr-rec-w16": _c("adrenal", 10, "adr-rec at width 16", overrides={**REC, "width": 16},
                      stem="stride2", input_norm="zscore"),
    "adr-rec-w16-long": _c("adrenal", 30, "adr-rec-w16 for 30 epochs",
                           overrides={**REC, "width": 16}, stem="stride2", input_norm="zscore"),
    "adr-rec-w16-aug-long": _c("adrenal", 30, "adr-rec-w16-long + hflip,crop",
                               overrides={**REC, "width": 16, "augment": "hflip,crop"},
                               stem="stride2", input_norm="zscore"),
    "adr-la": _c("adrenal", 10, "adr-rec with the logit-adjusted loss",
                 overrides={**REC, "loss": "logit_adjusted"}, stem="stride2",
                 input_norm="zscore"),
    "adr-fed-rec": _c("adrenal", 10, "FedAvg, 4 Dirichlet(0.5) sites, 10 rounds x 1 epoch, "
                      "recipe", overrides=REC, stem="stride2", input_norm="zscore", sites=4),
    "adr-fed-la": _c("adrenal", 10, "adr-fed-rec with the logit-adjusted loss",
                     overrides={**REC, "loss": "logit_adjusted"}, stem="stride2",
                     input_norm="zscore", sites=4),
    "adr-rec-bs32": _c("adrenal", 10, "adr-rec at batch 32", overrides={**REC, "batch_size": 32},
                       stem="stride2", input_norm="zscore"),
    "adr-rec-bs16": _c("adrenal", 10, "adr-rec at batch 16", overrides={**REC, "batch_size": 16},
                       stem="stride2", input_norm="zscore"),
    "adr-shift": _c("adrenal", 10, "adr-rec, train split imaged by 4 scanners (iid+shift), "
                    "val unshifted", overrides=REC, stem="stride2", input_norm="zscore",
                    shift_sites=4),
    "adr-shift-int": _c("adrenal", 10, "adr-shift + intensity augmentation",
                        overrides={**REC, "augment": "intensity"}, stem="stride2",
                        input_norm="zscore", shift_sites=4),
    "adr-rec-aug": _c("adrenal", 10, "adr-rec + hflip,crop",
                      overrides={**REC, "augment": "hflip,crop"}, stem="stride2",
                      input_norm="zscore"),
}


# --------------------------------------------------------------------------- data


def _stratified(split: Split, limit: int, seed: int) -> Split:
    """A stratified random subset of ``limit`` samples (class shares kept)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(split.labels)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.append(rng.choice(idx, size=round(limit * len(idx) / len(labels)), replace=False))
    return split.subset(np.sort(np.concatenate(keep)))


def load(cand: Candidate, data_dir: Path, seed: int) -> tuple[Dataset, Split, Split]:
    """The dataset, the (subset of the) train split and the val split."""
    data = read_npz(data_dir / FILES[cand.dataset])
    train = _stratified(data.train, cand.train_limit, seed) if cand.train_limit else data.train
    if cand.shift_sites:
        train = _shifted(train, cand.shift_sites, seed)
    return data, train, data.val


def _shifted(split: Split, parts: int, seed: int) -> Split:
    """``split`` cut at random into ``parts`` iid parts, part k imaged by site k's scanner."""
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(split))
    pieces = []
    for k, idx in enumerate(np.array_split(order, parts)):
        part = split.subset(np.sort(idx))
        images = apply_profile(part.images, site_profile(k, seed), seed=seed * 1000 + k)
        pieces.append(Split(images, part.labels))
    return Split.concat(pieces)


# --------------------------------------------------------------------------- runs


def _fedclinic(cand: Candidate, data: Dataset, train: Split, val: Split,
               seed: int) -> dict[str, Any]:
    cfg = RunConfig().replace(**cand.overrides, seed=seed)
    kw = {"stem": cand.stem} if cand.stem else {}
    kw["input_norm"] = cand.input_norm
    torch.manual_seed(seed)
    model = build_model(cfg.model, spatial_dims=data.task.spatial_dims,
                        in_channels=data.task.channels, num_classes=data.task.num_classes,
                        norm=cfg.norm, width=cfg.width, **kw)
    start = time.perf_counter()
    result = train_local(model, train, data.task, cfg, epochs=cand.epochs, seed=seed)
    wall = time.perf_counter() - start
    scores = evaluate(model, val, data.task)
    return {"config": {k: v for k, v in cfg.to_dict().items() if k in _SHOWN},
            "parameters": count_parameters(model), "train_loss": result.loss,
            "steps": result.steps, "wall_s": round(wall, 1), "val": scores}


_SHOWN = ("model", "width", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
          "lr_schedule", "warmup_fraction", "augment", "loss", "norm")


def _fedavg(cand: Candidate, data: Dataset, train: Split, val: Split,
            seed: int) -> dict[str, Any]:
    """FedAvg as a site does it (`train_local` with `round_window`, a fresh optimiser per
    round), sample-weighted averaging of the whole state, over Dirichlet(0.5) label skew."""
    cfg = RunConfig().replace(**cand.overrides, seed=seed, rounds=cand.epochs, local_epochs=1,
                              sites=cand.sites, partition="dirichlet:0.5")
    parts = partition_indices(np.asarray(train.labels), cand.sites, cfg.partition_spec, seed)
    torch.manual_seed(seed)
    model = build_model(cfg.model, spatial_dims=data.task.spatial_dims,
                        in_channels=data.task.channels, num_classes=data.task.num_classes,
                        norm=cfg.norm, width=cfg.width, stem=cand.stem or DEFAULT_STEM,
                        input_norm=cand.input_norm)
    start = time.perf_counter()
    for r in range(1, cfg.rounds + 1):
        states, weights = [], []
        for s, idx in enumerate(parts):
            local = copy.deepcopy(model)
            train_local(local, train.subset(idx), data.task, cfg, epochs=1,
                        seed=seed * 1000 + r * 10 + s, window=round_window(cfg, r))
            states.append(local.state_dict())
            weights.append(len(idx) / len(train))
        model.load_state_dict({k: sum(w * st[k].float() for w, st in zip(weights, states))
                               for k in states[0]})
    wall = time.perf_counter() - start
    return {"config": {k: v for k, v in cfg.to_dict().items() if k in _SHOWN},
            "site_sizes": [int(len(i)) for i in parts], "parameters": count_parameters(model),
            "wall_s": round(wall, 1), "val": evaluate(model, val, data.task)}


def _yardstick(cand: Candidate, data: Dataset, train: Split, val: Split,
               seed: int) -> dict[str, Any]:
    if not YARDSTICK.is_file():
        raise SystemExit(f"{YARDSTICK}: not found; the yardstick rows need ../shared/yardstick")
    spec = importlib.util.spec_from_file_location("plain_fedavg", YARDSTICK)
    yard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(yard)
    torch.manual_seed(seed)
    x = torch.tensor(train.images * 2.0 - 1.0)      # the yardstick's own scaling
    y = torch.tensor(np.asarray(train.labels))
    base = yard.model(data.task.channels, data.task.num_classes)
    start = time.perf_counter()
    model = yard.train_epochs(copy.deepcopy(base), x, y, cand.epochs, seed=seed)
    wall = time.perf_counter() - start
    scores = evaluate(_Rescale(model), val, data.task)
    return {"config": {"yardstick": str(YARDSTICK.name)}, "parameters": count_parameters(model),
            "wall_s": round(wall, 1), "val": scores}


class _Rescale(torch.nn.Module):
    """[0, 1] inputs -> [-1, 1] for a model trained on the latter."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x * 2.0 - 1.0)


def run(name: str, data_dir: Path, seed: int) -> dict[str, Any]:
    cand = CANDIDATES[name]
    data, train, val = load(cand, data_dir, seed)
    runner = _yardstick if cand.yardstick else _fedavg if cand.sites else _fedclinic
    out = runner(cand, data, train, val, seed)
    return {"candidate": name, "dataset": cand.dataset, "epochs": cand.epochs,
            "train_samples": len(train), "val_samples": len(val), "stem": cand.stem,
            "input_norm": cand.input_norm, "note": cand.note, "seed": seed, **out,
            "command": f".venv/bin/python -m bench.recipes --only {name} --seed {seed}"}


def summary(row: dict[str, Any]) -> str:
    v = row["val"]
    return (f"{row['candidate']}: val auc {v['auc']:.3f} bal_acc {v['balanced_accuracy']:.3f} "
            f"({row['epochs']} ep, {row['train_samples']} train, {row['wall_s']:.0f} s)")


def _merge(rows: list[dict[str, Any]], path: Path) -> None:
    old = json.loads(path.read_text()) if path.is_file() else {"rows": {}}
    for row in rows:
        old["rows"][f"{row['candidate']}/seed{row['seed']}"] = row
    old["machine"] = {"platform": platform.platform(), "torch": torch.__version__,
                      "threads": torch.get_num_threads()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(old, indent=1, sort_keys=True) + "\n")


def table(path: Path) -> str:
    """The Markdown evidence table of every stored row, in CANDIDATES order then seed."""
    rows = json.loads(path.read_text())["rows"] if path.is_file() else {}
    order = {name: i for i, name in enumerate(CANDIDATES)}
    lines = ["| candidate | data | train | epochs | seed | val AUC | val bal. acc | val loss | "
             "wall s | what |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows.values(), key=lambda r: (order.get(r["candidate"], 999), r["seed"])):
        v = row["val"]
        lines.append(f"| `{row['candidate']}` | {row['dataset']} | {row['train_samples']} | "
                     f"{row['epochs']} | {row['seed']} | {v['auc']:.3f} | "
                     f"{v['balanced_accuracy']:.3f} | {v['loss']:.3f} | {row['wall_s']:.0f} | "
                     f"{row['note']} |")
    return "\n".join(lines)


def bench_main(doc: str, candidates: dict[str, Any],
               run_one: Callable[[str, Path, int], dict[str, Any]],
               summarise: Callable[[dict[str, Any]], str], render: Callable[[Path], str],
               out: Path, listed: Callable[[str, Any], str]) -> None:
    """The command line of a candidate bench (this one, bench.dp_recipes): --list, --table,
    --only NAME / --all; each row run is merged into ``out`` and summarised on one line."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="candidate to run (repeatable)")
    parser.add_argument("--all", action="store_true", help="run every candidate")
    parser.add_argument("--list", action="store_true", help="list the candidates and exit")
    parser.add_argument("--table", action="store_true",
                        help="print the Markdown table of the stored results and exit")
    parser.add_argument("--seed", type=int, default=0, help="seed of subset, init and batches")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--data-dir", type=Path, default=DATA, help="folder of the .npz files")
    parser.add_argument("--out", type=Path, default=out, help="JSON results file (merged)")
    args = parser.parse_args()
    if args.table:
        print(render(args.out))
        return
    if args.list:
        for name, cand in candidates.items():
            print(listed(name, cand))
        return
    names = list(candidates) if args.all else args.only
    unknown = [n for n in names if n not in candidates]
    if unknown or not names:
        parser.error(f"unknown or no candidate(s) {unknown}; see --list")
    torch.set_num_threads(args.threads)
    for name in names:
        row = run_one(name, args.data_dir, args.seed)
        _merge([row], args.out)
        print(summarise(row), flush=True)


def main() -> None:
    bench_main(__doc__, CANDIDATES, run, summary, table, RESULTS,
               lambda name, cand: f"{name:28s} {cand.dataset:9s} {cand.epochs:3d} ep  {cand.note}")


if __name__ == "__main__":
    main()
