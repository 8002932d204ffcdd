"""Framework overhead of a simulated federation.

overhead = wall time of the simulated run / sum of the pure local-training seconds the sites
reported inside it (train_local only). Because Ray runs as many sites at once as there are cores,
we also report `overhead_vs_parallel_ideal` = wall / (sum of training / parallel slots).

    .venv/bin/python -m bench.overhead [--sites 5 10] [--rounds 3] [--dataset synthetic ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from common import rundir
from common.config import RunConfig
from common.datasets import load_dataset
from common.partitions.federation import build_federation
from simulations.simulate import run_flower_simulation

RESULTS = Path(__file__).resolve().parent / "results"


def measure(cfg: RunConfig) -> dict:
    """Time one federation (data prep excluded) and sum the sites' reported training time."""
    build_federation(load_dataset(cfg), cfg)   # warm the in-process cache, as simulate does
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = rundir.create_run_dir(cfg.replace(output_dir=tmp), "bench")
        start = time.perf_counter()
        history = run_flower_simulation(cfg, run_dir, echo=lambda line: None).history
        wall = time.perf_counter() - start
    train = sum(site["train"].get("train_seconds", 0.0)
                for line in history for site in line["sites"].values() if site["train"])
    client = sum(site["train"].get("client_seconds", 0.0)
                 for line in history for site in line["sites"].values() if site["train"])
    slots = max(1, min(cfg.sites, os.cpu_count() or 1))
    marks = [line["seconds"] for line in history]           # cumulative, from ServerApp start
    rounds = [round(b - a, 2) for a, b in zip(marks, marks[1:])]
    return {"sites": cfg.sites, "rounds": cfg.rounds, "wall_seconds": round(wall, 2),
            "sum_train_seconds": round(train, 2), "sum_client_seconds": round(client, 2),
            "parallel_slots": slots, "overhead": round(wall / train, 3),
            "overhead_vs_parallel_ideal": round(wall / (train / slots), 3),
            "round_seconds": rounds,
            "outside_rounds_seconds": round(wall - (marks[-1] - marks[0]), 2)}  # Ray start/stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[5, 10],
                        help="federation sizes to measure (default: 5 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run (default: 3)")
    parser.add_argument("--dataset", default="synthetic", help="dataset (default: synthetic)")
    parser.add_argument("--data-path", default="", help="medmnist file (default: none)")
    parser.add_argument("--model", default="resnet18", help="model (default: resnet18)")
    parser.add_argument("--num-samples", type=int, default=2400,
                        help="synthetic samples (default: 2400)")
    args = parser.parse_args()
    rows = []
    for sites in args.sites:
        cfg = RunConfig(dataset=args.dataset, data_path=args.data_path, sites=sites,
                        rounds=args.rounds, model=args.model, num_samples=args.num_samples,
                        baselines="")
        rows.append(measure(cfg))
        print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "overhead.json"
    out.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                               "dataset": args.dataset, "model": args.model, "runs": rows},
                              indent=2) + "\n")
    summary = ", ".join(f"{r['sites']} sites: {r['overhead']:.2f}x wall/train "
                        f"({r['overhead_vs_parallel_ideal']:.2f}x vs ideal parallel)" for r in rows)
    print(f"framework overhead: {summary} -> {out}")


if __name__ == "__main__":
    main()
