"""How many bins a noised validation histogram should have: Youden's threshold from noised
histograms against the argmax, on the VAL split of finished DP runs.

For each run directory (a `fedclinic simulate` run with a binary task and a `final_model.pt`)
the final model scores its dataset's val split; the two per-class score histograms are built
at 50 and at 10 bins, and N(0, sites x sigma^2) is added per cell (the sum of the sites'
independent noise, sigma the site policy's ``metric_noise_multiplier``) ``--draws`` times. Each
rule's threshold is then scored by the balanced accuracy it gives on the exact val scores:

* ``argmax``: threshold 0.5; ``exact50``: Youden on exact 50-bin histograms (no DP);
* ``noised50`` / ``noised10``: sites release 50 / 10 noised bins;
* ``coarsened50to10``: sites release 50 noised bins, the server sums them into 10.

    .venv/bin/python -m bench.noised_threshold RUN_DIR [RUN_DIR ...] [--draws 400] [--val-cases N]

Writes bench/results/noised_threshold.json (``_val<N>.json`` with --val-cases) and prints
one summary line (the mean balanced accuracy of each rule over the runs). Tuning evidence for
`common.operating_point.NOISED_HIST_BINS`; it reads val splits only.
"""

from __future__ import annotations

import argparse
import dataclasses
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
RULES = ("argmax", "exact50", "noised50", "noised10", "coarsened50to10")


def val_scores(run: Path, model_file: str = "final_model.pt"
               ) -> tuple[np.ndarray, np.ndarray, RunConfig]:
    """(class probabilities, labels) of the run's model (`model_file` in the run directory:
    its final model by default) on its dataset's val split."""
    raw = json.loads((run / "config.json").read_text())
    names = {f.name for f in dataclasses.fields(RunConfig)}
    cfg = RunConfig(**{k: v for k, v in raw.items() if k in names})
    data = load_dataset(cfg)
    if data.task.kind != "binary" or data.val is None:
        raise SystemExit(f"bench.noised_threshold: {run}: a binary task with a val split only")
    model = build_model(cfg.model, spatial_dims=data.task.spatial_dims,
                        in_channels=data.task.channels, num_classes=data.task.num_classes,
                        norm=cfg.norm, width=cfg.width)
    model.load_state_dict(torch.load(run / model_file, weights_only=False)["state_dict"])
    model.eval()
    probs = predict_proba(model, data.val.images, data.task)
    return probs, np.asarray(data.val.labels).reshape(-1), cfg


def balanced_accuracy(p1: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    called = p1 >= threshold
    return 0.5 * (called[labels == 1].mean() + (~called[labels == 0]).mean())


def youden_threshold(hist: np.ndarray) -> float:
    point = choose_threshold(np.clip(hist, 0.0, None), positive=1)
    return 0.5 if point is None else point.threshold


def score_rules(probs: np.ndarray, labels: np.ndarray, sites: int, sigma: float, draws: int,
                seed: int = 0) -> dict[str, list[float]]:
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
    out["noised10"] = [balanced_accuracy(p1, labels, youden_threshold(noised(coarse)))
                       for _ in range(draws)]
    out["coarsened50to10"] = [
        balanced_accuracy(p1, labels, youden_threshold(coarsened(noised(fine), 10)))
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
    args = p.parse_args(argv)
    results = {}
    for run in args.runs:
        probs, labels, cfg = val_scores(run)
        if 0 < args.val_cases < len(labels):
            keep = np.random.default_rng(1).choice(len(labels), args.val_cases, replace=False)
            probs, labels = probs[keep], labels[keep]
        rules = score_rules(probs, labels, cfg.sites, args.sigma, args.draws)
        results[run.name] = {"sites": cfg.sites, "val": int(len(labels)),
                             **{rule: summary(v) for rule, v in rules.items()}}
    out = RESULTS.with_name(f"noised_threshold_val{args.val_cases}.json") if args.val_cases \
        else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"sigma": args.sigma, "draws": args.draws,
                                   "val_cases": args.val_cases,
                                   "runs": results}, indent=1))
    means = {rule: statistics.fmean(r[rule]["mean"] for r in results.values())
             for rule in RULES}
    print("bench.noised_threshold: mean val balanced accuracy over "
          f"{len(results)} run(s): " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
