"""DP-SGD classification recipes: pooled sample-level DP training, scored on the VAL split.

The evidence behind the classification defaults under ``--dp sample`` (docs/recipes.md, "Under
--dp sample"). Every candidate trains one model with fedclinic's own DP-SGD loop
(`common.training.dp_local.train_local_dp`: Opacus, Poisson sampling, BatchMemoryManager) on a
stratified subset of a MedMNIST train split, with sigma calibrated by the privacy planner
(`common.privacy.planner.plan`) so that every candidate spends the same epsilon (one site, one
round of ``epochs`` local epochs), and scores it on the official validation split; the test
split is never read.

    .venv/bin/python -m bench.dp_recipes --list
    .venv/bin/python -m bench.dp_recipes --only dp-default [--only ...] [--threads 2]

Results are merged into bench/results/dp_recipes.json (one entry per candidate and seed);
one summary line per candidate is printed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.recipes import DATA, FILES, _stratified, bench_main
from common.config import RunConfig
from common.datasets.medmnist import read_npz
from common.models import build_model, count_parameters
from common.privacy.planner import plan
from common.training.dp_local import train_local_dp
from common.training.prediction import evaluate

RESULTS = Path(__file__).resolve().parent / "results" / "dp_recipes.json"
EPSILON, DELTA = 8.0, 1e-5
TRAIN_LIMIT = 1000

COS = {"lr_schedule": "cosine", "warmup_fraction": 0.1}


@dataclass(frozen=True)
class DPCandidate:
    """One row: RunConfig overrides (dp='sample' always) on a stratified train subset."""

    epochs: int
    overrides: dict[str, Any] = field(default_factory=dict)
    dataset: str = "pneumonia"
    train_limit: int = TRAIN_LIMIT
    note: str = ""


CANDIDATES: dict[str, DPCandidate] = {
    "dp-default": DPCandidate(8, {}, note="RunConfig's defaults: w16, batch 16, lr 0.02, "
                              "clip 1.0, constant lr"),
    "dp-b64-lr01-cos": DPCandidate(8, {"batch_size": 64, "lr": 0.1, **COS},
                                   note="batch 64, lr 0.1, warm-up + cosine, clip 1.0"),
    "dp-b128-lr02-cos": DPCandidate(8, {"batch_size": 128, "lr": 0.2, **COS},
                                    note="batch 128, lr 0.2, warm-up + cosine, clip 1.0"),
    "dp-b128-lr04-cos-c05": DPCandidate(8, {"batch_size": 128, "lr": 0.4, "max_grad_norm": 0.5,
                                             **COS},
                                        note="batch 128, lr 0.4, warm-up + cosine, clip 0.5"),
    "dp-b128-lr05-cos": DPCandidate(8, {"batch_size": 128, "lr": 0.5, **COS},
                                    note="batch 128, lr 0.5, warm-up + cosine, clip 1.0"),
}

_SHOWN = ("width", "batch_size", "lr", "momentum", "weight_decay", "lr_schedule",
          "warmup_fraction", "max_grad_norm", "loss")


def run(name: str, data_dir: Path, seed: int) -> dict[str, Any]:
    cand = CANDIDATES[name]
    data = read_npz(data_dir / FILES[cand.dataset])
    train = _stratified(data.train, cand.train_limit, seed) if cand.train_limit else data.train
    cfg = RunConfig().replace(dp="sample", **cand.overrides, seed=seed)
    p = plan(len(train), cfg.batch_size, cand.epochs, 1, target_epsilon=EPSILON, delta=DELTA,
             max_grad_norm=cfg.max_grad_norm)
    torch.manual_seed(seed)
    model = build_model(cfg.model, spatial_dims=data.task.spatial_dims,
                        in_channels=data.task.channels, num_classes=data.task.num_classes,
                        norm=cfg.norm, width=cfg.width)
    start = time.perf_counter()
    result = train_local_dp(model, train, data.task, cfg, epochs=cand.epochs, seed=seed,
                            noise_multiplier=p.noise_multiplier, sample_rate=p.sample_rate,
                            steps=p.steps_per_round)
    wall = time.perf_counter() - start
    return {"candidate": name, "dataset": cand.dataset, "epochs": cand.epochs,
            "train_samples": len(train), "val_samples": len(data.val), "note": cand.note,
            "seed": seed, "config": {k: v for k, v in cfg.to_dict().items() if k in _SHOWN},
            "norm": cfg.norm, "parameters": count_parameters(model),
            "privacy": {"target_epsilon": EPSILON, "epsilon": p.epsilon, "delta": p.delta,
                        "noise_multiplier": p.noise_multiplier, "sample_rate": p.sample_rate,
                        "steps": p.total_steps, "expected_batch": p.expected_batch_size},
            "train_loss": result.loss, "steps": result.steps, "wall_s": round(wall, 1),
            "val": evaluate(model, data.val, data.task),
            "command": f".venv/bin/python -m bench.dp_recipes --only {name} --seed {seed}"}


def summary(row: dict[str, Any]) -> str:
    v, pr = row["val"], row["privacy"]
    return (f"{row['candidate']}: val auc {v['auc']:.3f} bal_acc {v['balanced_accuracy']:.3f} "
            f"eps {pr['epsilon']:.2f} sigma {pr['noise_multiplier']:.3f} ({row['epochs']} ep, "
            f"{pr['steps']} steps, {row['train_samples']} train, {row['wall_s']:.0f} s)")


def table(path: Path) -> str:
    """The Markdown table of every stored row, in CANDIDATES order then seed."""
    rows = json.loads(path.read_text())["rows"] if path.is_file() else {}
    order = {name: i for i, name in enumerate(CANDIDATES)}
    lines = ["| candidate | train | epochs | seed | epsilon (delta 1e-5) | sigma | val AUC | "
             "val bal. acc | wall s | what |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows.values(), key=lambda r: (order.get(r["candidate"], 999), r["seed"])):
        v, pr = row["val"], row["privacy"]
        lines.append(f"| `{row['candidate']}` | {row['train_samples']} | {row['epochs']} | "
                     f"{row['seed']} | {pr['epsilon']:.2f} | {pr['noise_multiplier']:.3f} | "
                     f"{v['auc']:.3f} | {v['balanced_accuracy']:.3f} | {row['wall_s']:.0f} | "
                     f"{row['note']} |")
    return "\n".join(lines)


def main() -> None:
    bench_main(__doc__, CANDIDATES, run, summary, table, RESULTS,
               lambda name, cand: f"{name:24s} {cand.epochs:3d} ep  {cand.note}")


if __name__ == "__main__":
    main()
