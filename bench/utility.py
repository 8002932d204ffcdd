"""Utility on the shared MedMNIST data: federated strategies vs local and pooled, by epsilon.

Every cell is one public `fedclinic simulate` run (the CLI a user runs, recipe defaults
included) on a shared MedMNIST file, with the local and pooled baselines; the numbers are the
test-split metrics of summary.json at each model's operating point, chosen on validation data
(`common.operating_point`): AUC, balanced accuracy, sensitivity, specificity. Cells are kept
under bench/results/utility/ and reused when rerun; a cell that utility.json already holds is
not run again either (a fresh checkout has no cell folders), unless ``--rerun``.

    .venv/bin/python -m bench.utility                       # the issue's whole grid (hours)
    .venv/bin/python -m bench.utility --datasets pneumonia --strategies fedavg \\
        --epsilons inf --seeds 1 --rounds 10                # one cell

Writes bench/results/utility.json (every cell and the mean +- std per row) and
bench/results/utility.md (the table); prints one summary line. Cells of earlier invocations
stay in both (merged by cell name; ``--rerun`` replaces them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "medmnist"
RESULTS = Path(__file__).resolve().parent / "results"
CELLS = RESULTS / "utility"


@dataclass(frozen=True)
class DatasetSpec:
    file: str
    sites: int
    partition: str
    model: str
    extra: tuple[str, ...] = ()


DATASETS = {
    "pneumonia": DatasetSpec("pneumoniamnist.npz", 5, "dirichlet:0.5", "resnet18"),
    "adrenal": DatasetSpec("adrenalmnist3d.npz", 4, "iid+shift", "resnet18"),
}
# strategy name in the table -> the simulate flags that make it
STRATEGIES = {
    "fedavg": ("--strategy", "fedavg"),
    "fedprox": ("--strategy", "fedprox"),
    "fedadam": ("--strategy", "fedadam"),
    "fedavg+finetune": ("--strategy", "fedavg", "--personalize", "finetune"),
    "fedavg+local-norm": ("--strategy", "fedavg", "--personalize", "local-norm"),
}
METRICS = ("auc", "balanced_accuracy", "sensitivity", "specificity")
# The baselines do not depend on the strategy: the fedavg cell of each (dataset, epsilon, seed,
# rounds) trains both, a personalised cell its local models only (to say whether federation
# helped each site), the others none; the table's local and pooled rows are the fedavg cells'.
BASELINE_CELL = "fedavg"


def baselines_for(strategy: str) -> str:
    """The ``--baselines`` a cell of ``strategy`` runs."""
    if strategy == BASELINE_CELL:
        return "local,pooled"
    return "local" if "--personalize" in STRATEGIES[strategy] else ""


@dataclass(frozen=True)
class Cell:
    dataset: str
    strategy: str
    epsilon: str           # "inf" = no DP
    seed: int
    rounds: int

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.strategy}-eps{self.epsilon}-r{self.rounds}-s{self.seed}"

    @property
    def folder(self) -> str:
        """The run's folder under CELLS: `common.rundir.create_run_dir` writes "+" as "_"."""
        return self.name.replace("+", "_")

    def argv(self, out: Path) -> list[str]:
        spec = DATASETS[self.dataset]
        argv = [sys.executable, "-m", "fedclinic.cli", "simulate", "--dataset", "medmnist",
                "--data-path", str(DATA / spec.file), "--sites", str(spec.sites),
                "--partition", spec.partition, "--model", spec.model,
                "--rounds", str(self.rounds), "--seed", str(self.seed),
                "--baselines", baselines_for(self.strategy), "--output-dir", str(out.parent),
                "--run-name", out.name, *STRATEGIES[self.strategy], *spec.extra]
        if self.epsilon != "inf":
            argv += ["--dp", "sample", "--target-epsilon", self.epsilon]
        return argv


def run_simulation(argv: list[str], out: Path) -> tuple[int, str]:
    """Run one `fedclinic simulate` (``argv``) into ``out`` unless its summary.json exists (an
    unfinished run there is removed first), its wall seconds written to bench-wall.txt;
    (exit code, the end of its output) when it failed, (0, '') otherwise."""
    summary = out / "summary.json"
    if summary.exists():
        return 0, ""
    if out.exists():                  # an unfinished run: the new one must land in its place
        shutil.rmtree(out)
    start = time.perf_counter()
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not summary.exists():
        tail = (proc.stdout[-1500:] + "\n" + proc.stderr[-1500:]).strip()
        return proc.returncode, tail or f"no {summary.name} written"
    (out / "bench-wall.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    return 0, ""


def run_cell(cell: Cell) -> dict:
    """The cell's summary (run now, or read from an earlier run)."""
    out = CELLS / cell.folder
    code, error = run_simulation(cell.argv(out), out)
    if error:
        return {"cell": asdict(cell), "returncode": code, "error": error}
    data = json.loads((out / "summary.json").read_text())
    wall = out / "bench-wall.txt"
    points = {model: point.get("global", {})
              for model, point in data.get("operating_point", {}).items()
              if model != "personalised"}
    if "personalised" in data:          # per-site scores only: their mean over the sites
        own = data.get("operating_point", {}).get("personalised", {}).get("sites", {})
        points["personalised (site mean)"] = {
            "auc": _site_mean(data["personalised"]["sites"]),
            **{k: _site_mean(own, k) for k in METRICS if k != "auc" and own}}
        points["worse_than_local"] = _worse_than_local(data)
    seconds = float(wall.read_text()) if wall.exists() else data.get("wall_seconds")
    return {"cell": asdict(cell), "wall_s": seconds,
            "operating_point": points}


def _site_mean(sites: dict, key: str = "auc") -> float:
    values = [float(m[key]) for m in sites.values() if m.get(key) == m.get(key)
              and m.get(key) is not None]
    return statistics.fmean(values) if values else float("nan")


def _worse_than_local(data: dict, margin: float = 0.02, min_test: int = 30) -> dict:
    """Sites with >= ``min_test`` test cases whose best federated option (global or
    personalised) trails their local model by more than ``margin`` AUC (issue 14's target)."""
    sizes = data.get("site_counts", {})
    worse = [site for site, verdict in data.get("federation_helped", {}).items()
             if verdict.get("metric") == "auc" and verdict.get("delta") is not None
             and verdict["delta"] < -margin and sizes.get(site, {}).get("test", 0) >= min_test]
    return {"sites": worse}


def _mean_std(values: list[float]) -> dict:
    values = [v for v in values if v == v]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def rows(results: list[dict]) -> list[dict]:
    """Mean +- std over seeds per (dataset, epsilon, rounds, model), model = strategy or
    baseline."""
    grouped: dict[tuple, list[dict]] = {}
    for r in results:
        if "error" in r:
            continue
        c = r["cell"]
        for model, point in r["operating_point"].items():
            if model == "worse_than_local":
                continue
            if model in ("local", "pooled") and c["strategy"] != BASELINE_CELL:
                continue                    # the same baseline again: counted once per seed
            if model.startswith("personalised"):
                label = f"{c['strategy']} personalised (site mean)"
            else:
                label = c["strategy"] if model == "federated" else model
            key = (c["dataset"], c["epsilon"], int(c.get("rounds", 0)), label)
            grouped.setdefault(key, []).append({**point, "wall_s": r["wall_s"]})
    out = []
    for (dataset, eps, rounds, label), points in sorted(grouped.items()):
        row = {"dataset": dataset, "epsilon": eps, "rounds": rounds, "model": label,
               "seeds": len(points)}
        for m in (*METRICS, "wall_s"):
            row[m] = _mean_std([float(p[m]) for p in points if p.get(m) is not None])
        out.append(row)
    return out


def markdown(table: list[dict]) -> str:
    head = ("| dataset | epsilon | rounds | model | seeds | AUC | balanced acc | sensitivity | "
            "specificity | wall s (cell, with the baselines it ran) |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")

    def cell(s: dict) -> str:
        return "-" if s["mean"] is None else f"{s['mean']:.3f} +- {s['std']:.3f}"

    lines = [f"| {r['dataset']} | {r['epsilon']} | {r['rounds']} | {r['model']} | "
             f"{r['seeds']} | "
             + " | ".join(cell(r[m]) for m in METRICS)
             + f" | {cell(r['wall_s'])} |" for r in table]
    return head + "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--datasets", default="pneumonia,adrenal")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--epsilons", default="inf,8,2")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--rerun", action="store_true",
                   help="run cells again that utility.json already holds (default: keep them, "
                        "so a grid can be grown a few cells at a time on a fresh checkout)")
    return p.parse_args(argv)


def _name(result: dict) -> str:
    c = result.get("cell") or {}
    return Cell(**c).name if set(c) == {"dataset", "strategy", "epsilon", "seed",
                                        "rounds"} else ""


def merge_cells(earlier: list[dict], new: list[dict]) -> list[dict]:
    """Earlier cells (utility.json's) with this invocation's, a new result replacing an
    earlier one of the same cell; cells that failed are not kept from earlier runs."""
    out = {_name(r): r for r in earlier if "error" not in r and _name(r)}
    out.update({_name(r) or f"new-{i}": r for i, r in enumerate(new)})
    return list(out.values())


def _earlier_cells() -> list[dict]:
    path = RESULTS / "utility.json"
    try:
        return list(json.loads(path.read_text()).get("cells", []))
    except (OSError, ValueError):
        return []


def write_results(merged: list[dict]) -> list[dict]:
    """utility.json and utility.md for these cells; the table's rows."""
    table = rows(merged)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "utility.json").write_text(json.dumps(
        {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
         "cells": merged, "rows": table}, indent=1))
    (RESULTS / "utility.md").write_text(markdown(table))
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    cells = [Cell(d, s, e, seed, args.rounds) for d in args.datasets.split(",")
             for s in args.strategies.split(",") for e in args.epsilons.split(",")
             for seed in range(args.seeds)]
    unknown = [c for c in cells if c.dataset not in DATASETS or c.strategy not in STRATEGIES]
    if unknown:
        print(f"bench.utility: unknown dataset/strategy in {unknown[0]}; datasets "
              f"{', '.join(DATASETS)}, strategies {', '.join(STRATEGIES)}", file=sys.stderr)
        return 2
    earlier = _earlier_cells()
    done = {} if args.rerun else {_name(r): r for r in earlier if "error" not in r}
    results: list[dict] = []
    table: list[dict] = []
    for i, cell in enumerate(cells, 1):
        kept = cell.name in done
        print(f"[{i}/{len(cells)}] {cell.name}{' (kept from utility.json)' if kept else ''}",
              file=sys.stderr, flush=True)
        results.append(done[cell.name] if kept else run_cell(cell))
        table = write_results(merge_cells(earlier, results))   # a batch cut short keeps its cells
    failed = sum("error" in r for r in results)
    best = [r for r in table if r["model"] not in ("local", "pooled")]
    shown = "; ".join(f"{r['dataset']} eps {r['epsilon']} {r['model']} AUC "
                      f"{r['auc']['mean']:.3f} bal {r['balanced_accuracy']['mean']:.3f}"
                      for r in best if r["auc"]["mean"] is not None)
    print(f"bench.utility: {len(results) - failed}/{len(results)} cells; {shown}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
