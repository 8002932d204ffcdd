"""How many bins a noised validation histogram should have: Youden's threshold from noised
histograms against the argmax, on the VAL split of finished DP runs.

For each run directory (a `fedclinic simulate` run with a binary task and a `final_model.pt`)
the final model scores its dataset's val split; the two per-class score histograms are built
at 50 and at 10 bins, and N(0, sites x sigma^2) is added per cell (the sum of the sites'
independent noise, sigma the site policy's ``metric_noise_multiplier``) ``--draws`` times. Each
rule's threshold is then scored by the balanced accuracy it gives on the exact val scores:

* ``argmax``: threshold 0.5; ``exact50``: Youden on exact 50-bin histograms (no DP);
* ``noised50`` / ``noised10``: sites release 50 / 10 noised bins;
* ``coarsened50to10``: sites release 50 noised bins, the server sums them into 10;
* ``unclamped10``: 10 noised bins, the cumulative counts read without clamping each cell at 0
  first (clamping adds a positive bias to every empty bin);
* ``gated10_z<Z>``: Youden on 10 noised bins when both noised class totals are at least Z times
  their noise's standard deviation (sigma x sqrt(sites x bins)), else the argmax (the
  logit-adjusted loss of ``--dp sample`` already targets balanced accuracy at 0.5);
* ``gatedp10_z<Z>``: as gated10, the smaller class's total estimated with less noise: the
  training share of that class (``prior``) times the histograms' noised grand total;
* ``gatedprior10_z<Z>``: as gated10, with the ``prior`` threshold instead of the argmax when
  the histograms are mostly noise;
* ``prior``: P(label 1) >= the training share of label 1 (the exact share: its noise is small).

With ``--from-train`` the thresholds are chosen instead from histograms of the final model's
scores on the TRAIN split (the union of the sites' train splits: about 9x the val cases), exact
or noised as above, and still scored on the exact val scores (`train_rules`): whether a
train-split release, which DP-SGD's bound on memorisation keeps close to held-out data, would
locate a better threshold than the val split's.

    .venv/bin/python -m bench.noised_threshold RUN_DIR [RUN_DIR ...] [--draws 400]
        [--val-cases N] [--tag NAME] [--from-train]

Writes bench/results/noised_threshold.json (``_<tag>`` and ``_val<N>`` with --tag and
--val-cases) and prints
one summary line (the mean balanced accuracy of each rule over the runs). Tuning evidence for
`common.operating_point.NOISED_HIST_BINS`; it reads val splits only.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from client.policy import SitePolicy
from common.config import RunConfig
from common.datasets import load_dataset
from common.models import build_model
from common.operating_point import choose_threshold, coarsened, score_histograms
from common.training.prediction import predict_proba

RESULTS = Path(__file__).resolve().parent / "results" / "noised_threshold.json"
GATES = (0.5, 1.0, 1.5, 2.0)
RULES = ("argmax", "exact50", "noised50", "noised10", "coarsened50to10", "unclamped10",
         *(f"gated10_z{z:g}" for z in GATES), *(f"gatedp10_z{z:g}" for z in GATES),
         *(f"gatedprior10_z{z:g}" for z in GATES), "prior")


@functools.lru_cache(maxsize=1)
def _dataset(cfg: RunConfig):
    """The run's dataset, read once for its val scores and its train share."""
    return load_dataset(cfg)


TRAIN_RULES = ("prior", "val_exact50", "train_exact10", "train_exact50", "train_noised10",
               "train_noised50")


def val_scores(run: Path, model_file: str = "final_model.pt", split: str = "val"
               ) -> tuple[np.ndarray, np.ndarray, RunConfig]:
    """(class probabilities, labels) of the run's model (`model_file` in the run directory:
    its final model by default) on its dataset's ``split`` (val, or train)."""
    raw = json.loads((run / "config.json").read_text())
    names = {f.name for f in dataclasses.fields(RunConfig)}
    cfg = RunConfig(**{k: v for k, v in raw.items() if k in names})
    data = _dataset(cfg)
    if data.task.kind != "binary" or data.val is None:
        raise SystemExit(f"bench.noised_threshold: {run}: a binary task with a val split only")
    model = build_model(cfg.model, spatial_dims=data.task.spatial_dims,
                        in_channels=data.task.channels, num_classes=data.task.num_classes,
                        norm=cfg.norm, width=cfg.width)
    model.load_state_dict(torch.load(run / model_file, weights_only=False)["state_dict"])
    model.eval()
    part = data.val if split == "val" else data.train
    probs = predict_proba(model, part.images, data.task)
    return probs, np.asarray(part.labels).reshape(-1), cfg


def train_share(cfg: RunConfig) -> float:
    """The share of label 1 in the run's dataset's train split."""
    return float(np.mean(np.asarray(_dataset(cfg).train.labels).reshape(-1) == 1))


def balanced_accuracy(p1: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    called = p1 >= threshold
    return 0.5 * (called[labels == 1].mean() + (~called[labels == 0]).mean())


def youden_threshold(hist: np.ndarray) -> float:
    point = choose_threshold(np.clip(hist, 0.0, None), positive=1)
    return 0.5 if point is None else point.threshold


def unclamped_threshold(hist: np.ndarray) -> float:
    """Youden's threshold from the raw cumulative counts, the shares clamped to [0, 1]."""
    totals = hist.sum(axis=1)
    if (totals <= 0).any():
        return 0.5
    above = np.concatenate([np.cumsum(hist[:, ::-1], axis=1)[:, ::-1], np.zeros((2, 1))], axis=1)
    share = np.clip(above / totals[:, None], 0.0, 1.0)
    j = share[1] - share[0]
    best = np.flatnonzero(np.round(j, 12) == np.round(j.max(), 12))
    k = best[np.argmin(np.abs(best / hist.shape[1] - 0.5))]
    return float(k / hist.shape[1])


def gated_threshold(hist: np.ndarray, total_sd: float, z: float, share: float = 0.0,
                    fallback: float = 0.5) -> float:
    """Youden on ``hist`` when the smaller class total is >= z x ``total_sd``, else
    ``fallback``; with ``share`` (the smaller class's training share) that total is share x the
    grand total."""
    smaller = share * hist.sum() if share else hist.sum(axis=1).min()
    return youden_threshold(hist) if smaller >= z * total_sd else fallback


def score_rules(probs: np.ndarray, labels: np.ndarray, sites: int, sigma: float, draws: int,
                seed: int = 0, prior: float = 0.5) -> dict[str, list[float]]:
    """Each rule's val balanced accuracy, one value per noise draw (one for the exact rules)."""
    rng = np.random.default_rng(seed)
    p1 = probs[:, 1]
    fine, coarse = score_histograms(labels, probs, 50), score_histograms(labels, probs, 10)
    scale = sigma * np.sqrt(sites)

    def noised(h: np.ndarray) -> np.ndarray:
        return h + rng.normal(0.0, scale, h.shape)

    out = {"argmax": [balanced_accuracy(p1, labels, 0.5)],
           "exact50": [balanced_accuracy(p1, labels, youden_threshold(fine))]}
    out["noised50"] = [balanced_accuracy(p1, labels, youden_threshold(noised(fine)))
                       for _ in range(draws)]
    draws10 = [noised(coarse) for _ in range(draws)]          # one set for every 10-bin rule
    out["noised10"] = [balanced_accuracy(p1, labels, youden_threshold(h)) for h in draws10]
    out["coarsened50to10"] = [
        balanced_accuracy(p1, labels, youden_threshold(coarsened(noised(fine), 10)))
        for _ in range(draws)]
    out["unclamped10"] = [balanced_accuracy(p1, labels, unclamped_threshold(h)) for h in draws10]
    total_sd = scale * np.sqrt(coarse.shape[1])
    for z in GATES:
        out[f"gated10_z{z:g}"] = [balanced_accuracy(p1, labels, gated_threshold(h, total_sd, z))
                                  for h in draws10]
    for z in GATES:
        out[f"gatedp10_z{z:g}"] = [
            balanced_accuracy(p1, labels, gated_threshold(h, total_sd, z, min(prior, 1 - prior)))
            for h in draws10]
    for z in GATES:
        out[f"gatedprior10_z{z:g}"] = [
            balanced_accuracy(p1, labels, gated_threshold(h, total_sd, z, fallback=prior))
            for h in draws10]
    out["prior"] = [balanced_accuracy(p1, labels, prior)]
    return out


def train_rules(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                sites: int, sigma: float, draws: int, seed: int = 0, prior: float = 0.5
                ) -> dict[str, list[float]]:
    """Val balanced accuracy of thresholds chosen on the train split's score histograms
    (``train``: its probabilities and labels), exact and with the sites' summed noise, against
    the prior threshold and Youden on the exact val histograms (``val``)."""
    rng = np.random.default_rng(seed)
    (tp, tl), (vp, vl) = train, val
    scale = sigma * np.sqrt(sites)

    def on_val(threshold: float) -> float:
        return balanced_accuracy(vp[:, 1], vl, threshold)

    out = {"prior": [on_val(prior)],
           "val_exact50": [on_val(youden_threshold(score_histograms(vl, vp, 50)))]}
    for bins in (10, 50):
        hist = score_histograms(tl, tp, bins)
        out[f"train_exact{bins}"] = [on_val(youden_threshold(hist))]
        out[f"train_noised{bins}"] = [
            on_val(youden_threshold(hist + rng.normal(0.0, scale, hist.shape)))
            for _ in range(draws)]
    return out


def summary(values: list[float]) -> dict[str, float]:
    v = np.asarray(values)
    return {"mean": float(v.mean()), "p10": float(np.percentile(v, 10)),
            "p90": float(np.percentile(v, 90))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--draws", type=int, default=400)
    p.add_argument("--sigma", type=float, default=SitePolicy().metric_noise_multiplier)
    p.add_argument("--val-cases", type=int, default=0,
                   help="score a random subset of this many val cases (a smaller val split, "
                        "as in the small MedMNIST subsets); 0: all")
    p.add_argument("--tag", default="",
                   help="write noised_threshold_<tag>.json (e.g. the dataset's name)")
    p.add_argument("--from-train", action="store_true",
                   help="choose the thresholds on the train split's histograms (`train_rules`)")
    args = p.parse_args(argv)
    results = {}
    for run in args.runs:
        probs, labels, cfg = val_scores(run)
        if 0 < args.val_cases < len(labels):
            keep = np.random.default_rng(1).choice(len(labels), args.val_cases, replace=False)
            probs, labels = probs[keep], labels[keep]
        if args.from_train:
            train = val_scores(run, split="train")[:2]
            rules = train_rules(train, (probs, labels), cfg.sites, args.sigma, args.draws,
                                prior=train_share(cfg))
        else:
            rules = score_rules(probs, labels, cfg.sites, args.sigma, args.draws,
                                prior=train_share(cfg))
        results[run.name] = {"sites": cfg.sites, "val": int(len(labels)),
                             **{rule: summary(v) for rule, v in rules.items()}}
    parts = (args.tag, args.val_cases and f"val{args.val_cases}", args.from_train and "train")
    suffix = "".join(f"_{part}" for part in parts if part)
    out = RESULTS.with_name(f"noised_threshold{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"sigma": args.sigma, "draws": args.draws,
                                   "val_cases": args.val_cases,
                                   "runs": results}, indent=1))
    means = {rule: statistics.fmean(r[rule]["mean"] for r in results.values())
             for rule in (TRAIN_RULES if args.from_train else RULES)}
    print("bench.noised_threshold: mean val balanced accuracy over "
          f"{len(results)} run(s): " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
