"""DP settings for a federation, chosen on the VAL split: FedAvg (or a candidate's strategy) under
`--dp sample`.

Each candidate is a set of flags on top of the `--dp sample` defaults
(`common.task_defaults.DP_CLASSIFICATION_RECIPE`): one `fedclinic simulate` per (candidate,
seed) over the utility bench's federation of the dataset (`bench.utility.DATASETS`: 5
Dirichlet(0.5) PneumoniaMNIST sites, or 4 `iid+shift` AdrenalMNIST3D sites) at epsilon 8 per
site, no baselines. The model
the run chose (``best_model.pt``, else ``final_model.pt``) is then scored on the dataset's
official val split; the test split is never read (the run's own report scores it; this bench
does not look). Three numbers per run:

* ``val_auc``: how well the model ranks the val cases; ``val_loss``: its cross-entropy there
  (finer than an AUC near 1, and what model selection without DP compares);
* ``val_bal_acc``: balanced accuracy at the run's own operating point (the threshold the server
  chose from the sites' noised validation histograms): what a clinician would get;
* ``val_bal_acc_youden``: at Youden's threshold on the exact val scores (an oracle, not a
  method): separates the model from its threshold.

    .venv/bin/python -m bench.dp_federated --list
    .venv/bin/python -m bench.dp_federated --only default,lr02 --seeds 3 [--rounds 10]
    .venv/bin/python -m bench.dp_federated --dataset adrenal --only default,w32
    .venv/bin/python -m bench.dp_federated --table     # docs/recipes.md's table

Runs land in bench/results/dp_federated/ (gitignored); a run whose summary.json exists is
scored again, not rerun. Results merge into bench/results/dp_federated.json, one entry per
(candidate, seed); one summary line per candidate (mean +- std over its seeds) is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

from bench.noised_threshold import balanced_accuracy, val_scores, youden_threshold
from bench.utility import DATA, DATASETS, run_simulation
from common.metrics import classification_metrics
from common.operating_point import score_histograms

RESULTS = Path(__file__).resolve().parent / "results" / "dp_federated.json"
RUNS = RESULTS.with_suffix("")

# Flags on top of the --dp sample defaults (batch 64, lr 0.1, cosine, logit-adjusted CE, width
# 16, 2 local epochs, clip 1.0, momentum 0.9, no warm-up, no weight decay).
CANDIDATES: dict[str, tuple[str, ...]] = {
    "default": (),
    "lr02": ("--lr", "0.2"),
    "lr005": ("--lr", "0.05"),
    "lr002": ("--lr", "0.02"),
    "b128-lr02": ("--batch-size", "128", "--lr", "0.2"),
    "b256-lr04": ("--batch-size", "256", "--lr", "0.4"),
    "ep4": ("--local-epochs", "4"),
    "ep1": ("--local-epochs", "1"),
    "w32": ("--width", "32"),
    "w8": ("--width", "8"),       # fewer parameters: less noise per step under DP-SGD
    # parameter averaging: each site sends the EMA of its round's DP-SGD iterates (free)
    "ema09": ("--ema-decay", "0.9"),
    "ema07": ("--ema-decay", "0.7"),
    # class-balanced clipping: each record's clipped gradient weighted (p_min / p_class) ** tau
    "bal1": ("--dp-class-balance", "1.0"),
    "bal05": ("--dp-class-balance", "0.5"),
    # the balanced weights already undo the prior: plain CE, not the logit-adjusted loss too
    "bal1-ce": ("--dp-class-balance", "1.0", "--loss", "ce"),
    "warm": ("--warmup-fraction", "0.1"),
    "clip05-lr02": ("--max-grad-norm", "0.5", "--lr", "0.2"),
    # augmentation multiplicity K = 1 (one augmented copy per record and step): whether plain
    # augmentation helps under DP-SGD before paying K times the compute for K > 1
    "aug": ("--augment", "hflip,crop"),
    "aug-int": ("--augment", "intensity"),
    # augmentation multiplicity K = 4: each record's gradient averaged over 4 augmented copies
    # before clipping (4x the compute of a step, the same privacy)
    "aug-m4": ("--augment", "hflip,crop", "--aug-multiplicity", "4"),
    "crop-m4": ("--augment", "crop", "--aug-multiplicity", "4"),
    "aug-int-m4": ("--augment", "intensity", "--aug-multiplicity", "4"),
    "wd": ("--weight-decay", "5e-4"),
    # FedAdam under DP: Flower's tau (1e-3) makes each coordinate's step about eta whatever the
    # size of its (mostly noise) update; a larger tau moves it towards FedAvg's averaged step
    "fedadam": ("--strategy", "fedadam"),
    "fedadam-tau01": ("--strategy", "fedadam", "--server-tau", "0.01"),
    "fedadam-tau1": ("--strategy", "fedadam", "--server-tau", "0.1", "--server-lr", "0.1"),
    # --init-from a public checkpoint (issue 14 items 5 and 6): "@NAME" is PRETRAINED[NAME]'s
    # final_model.pt, trained first if it is not there yet
    "init-chest": ("--init-from", "@chest2d-w16"),
}

# Public checkpoints: one non-DP `fedclinic simulate` each, pooled (1 site) on a public dataset,
# the classification recipe's defaults except the width (16: the --dp sample default, so that
# its layers fit a DP run). PneumoniaMNIST (2D) starts a 3D run through --init-from's I3D
# kernel inflation.
PRETRAINED: dict[str, tuple[str, ...]] = {
    "chest2d-w16": ("--data-path", str(DATA / DATASETS["pneumonia"].file), "--sites", "1",
                    "--partition", "iid", "--model", "resnet18", "--width", "16",
                    "--rounds", "10", "--seed", "0"),
}


def run_name(candidate: str, seed: int, rounds: int, epsilon: str,
             dataset: str = "pneumonia") -> str:
    prefix = "" if dataset == "pneumonia" else f"{dataset}-"
    return f"{prefix}{candidate}-eps{epsilon}-r{rounds}-s{seed}"


def pretrained(name: str) -> Path:
    """PRETRAINED[name]'s model file, after training it if its run has no summary yet."""
    out = RUNS / f"pretrain-{name}"
    code, error = run_simulation([sys.executable, "-m", "fedclinic.cli", "simulate",
                                  "--dataset", "medmnist", *PRETRAINED[name], "--baselines", "",
                                  "--output-dir", str(out.parent), "--run-name", out.name], out)
    if error:
        raise RuntimeError(f"{out.name}: exit {code}\n{error}")
    return out / "final_model.pt"


def resolved(flags: tuple[str, ...]) -> list[str]:
    """A candidate's flags with each "@NAME" replaced by that public checkpoint's path."""
    return [str(pretrained(f[1:])) if f.startswith("@") else f for f in flags]


def argv(candidate: str, seed: int, rounds: int, epsilon: str, out: Path,
         dataset: str = "pneumonia") -> list[str]:
    spec = DATASETS[dataset]
    return [sys.executable, "-m", "fedclinic.cli", "simulate", "--dataset", "medmnist",
            "--data-path", str(DATA / spec.file), "--sites", str(spec.sites),
            "--partition", spec.partition, "--model", spec.model, *spec.extra,
            "--rounds", str(rounds), "--seed", str(seed),
            "--baselines", "", "--strategy", "fedavg", "--output-dir", str(out.parent),
            "--run-name", out.name, "--dp", "sample", "--target-epsilon", epsilon,
            *resolved(CANDIDATES[candidate])]


def run(candidate: str, seed: int, rounds: int, epsilon: str,
        dataset: str = "pneumonia") -> tuple[Path, float | None]:
    """The run's directory (trained now unless its summary exists) and its wall time."""
    out = RUNS / run_name(candidate, seed, rounds, epsilon, dataset)
    code, error = run_simulation(argv(candidate, seed, rounds, epsilon, out, dataset), out)
    if error:
        raise RuntimeError(f"{out.name}: exit {code}\n{error}")
    wall = out / "bench-wall.txt"
    return out, float(wall.read_text()) if wall.exists() else None


def score(out: Path) -> dict[str, float]:
    """The chosen model's val scores (see the module docstring)."""
    summary = json.loads((out / "summary.json").read_text())
    model_file = "best_model.pt" if (out / "best_model.pt").exists() else "final_model.pt"
    probs, labels, _ = val_scores(out, model_file)
    selection = summary.get("selection") or {}
    point = selection.get("operating_point") or {}
    threshold = float(point.get("positive_threshold") or 0.5)
    p1 = probs[:, 1]
    picked = probs[np.arange(len(labels)), labels.astype(int)]
    return {"val_auc": classification_metrics("binary", labels, probs)["auc"],
            "val_loss": float(-np.log(np.clip(picked, 1e-12, None)).mean()),
            "val_bal_acc": float(balanced_accuracy(p1, labels, threshold)),
            "val_bal_acc_youden": float(balanced_accuracy(
                p1, labels, youden_threshold(score_histograms(labels, probs, 50)))),
            "threshold": threshold, "chosen_round": selection.get("chosen_round"),
            "model": model_file}


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} +- {statistics.stdev(values):.3f}"


def table(results: dict) -> str:
    """The Markdown table of docs/recipes.md: one row per candidate, mean +- std over seeds."""
    by: dict[tuple[str, str], list[dict]] = {}
    for row in results.get("runs", {}).values():
        by.setdefault((row.get("dataset", "pneumonia"), row["candidate"]), []).append(row)
    lines = ["| dataset | candidate | flags | seeds | val AUC | val loss | val bal. acc at the "
             "run's threshold | at Youden on exact val (oracle) | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (dataset, name), rows in by.items():
        walls = [r["wall_s"] for r in rows if r.get("wall_s")]
        wall = f"{statistics.fmean(walls):.0f}" if walls else ""
        scores = " | ".join(spread([r[k] for r in rows]) for k in
                            ("val_auc", "val_loss", "val_bal_acc", "val_bal_acc_youden"))
        flags = " ".join(rows[0]["flags"]) or "(defaults)"
        lines.append(f"| {dataset} | `{name}` | {flags} | {len(rows)} | {scores} | {wall} |")
    return "\n".join(lines)


def main(argv_: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", default="default", help="comma-separated candidate names")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 of each candidate")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--epsilon", default="8")
    p.add_argument("--dataset", default="pneumonia", choices=sorted(DATASETS))
    p.add_argument("--list", action="store_true", help="print the candidates and exit")
    p.add_argument("--table", action="store_true",
                   help="print the Markdown table of the results so far and exit")
    args = p.parse_args(argv_)
    if args.table:
        print(table(json.loads(RESULTS.read_text()) if RESULTS.exists() else {}))
        return 0
    if args.list:
        for name, flags in CANDIDATES.items():
            print(f"{name}: {' '.join(flags) or '(the --dp sample defaults)'}")
        return 0
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise SystemExit(f"bench.dp_federated: unknown candidate(s) {unknown}; --list shows them")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": {}}
    results["machine"] = {"cpu": platform.processor() or platform.machine(),
                          "threads": os.cpu_count()}
    for name in names:
        rows = []
        for seed in range(args.seeds):
            out, seconds = run(name, seed, args.rounds, args.epsilon, args.dataset)
            row = {"candidate": name, "dataset": args.dataset,
                   "flags": list(CANDIDATES[name]), "seed": seed,
                   "rounds": args.rounds, "epsilon": args.epsilon, "wall_s": seconds,
                   **score(out)}
            results["runs"][out.name] = row
            rows.append(row)
            RESULTS.write_text(json.dumps(results, indent=1))
        print(f"bench.dp_federated: {args.dataset} {name} ({len(rows)} seeds, eps {args.epsilon}, "
              f"{args.rounds} rounds): val AUC {spread([r['val_auc'] for r in rows])}, "
              f"loss {spread([r['val_loss'] for r in rows])}, "
              f"bal. acc at the run's threshold {spread([r['val_bal_acc'] for r in rows])}, "
              f"at Youden on exact val {spread([r['val_bal_acc_youden'] for r in rows])}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
