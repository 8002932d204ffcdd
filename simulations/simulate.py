"""`fedclinic simulate`: a whole federation on one machine with Flower's simulation engine.

``task='segmentation'`` runs the same pipeline on masks (see `common.seg_data`): sites and
baselines report Dice/IoU/HD95/ASD, the membership-inference audit scores each image by its mean
pixel/voxel cross-entropy, and overlay PNGs of the final model's predictions go to
``run_dir/overlays/``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common import rundir
from common.config import RunConfig
from common.datasets import load_dataset
from common.mia import audit, balanced, scores_to_result
from common.seg_data import check_dp_volume_mode, check_task_model, for_task
from common.training import per_sample_seg_loss
from simulations.baselines import BASELINE_RUNNERS, initial_model
from simulations.overlays import write_overlays
from simulations.partition import build_federation, write_partition_report
from simulations.report import build_summary, privacy_summary, write_report

SEG_AUDIT_NOTE = ("Segmentation: the attacks score each image by its mean per-pixel (per-voxel) "
                  "cross-entropy under the model, the image-level analogue of the per-sample "
                  "loss used for classifiers.")


@dataclass(frozen=True)
class SimulationOutcome:
    run_dir: Path
    summary: dict
    history: list[dict]


def _say(line: str) -> None:
    print(line, flush=True)


def backend_config(verbose: bool = False) -> dict:
    """Ray: one CPU per virtual site, as many sites at once as the machine has cores. Site errors
    reach the server as error replies (and are reported), so actor logs are shown only if verbose."""
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": max(1, os.cpu_count() or 1),
                      "logging_level": "INFO" if verbose else "ERROR",
                      "log_to_driver": verbose, "include_dashboard": False},
    }


def run_flower_simulation(cfg: RunConfig, run_dir: Path, echo: Callable[[str], None],
                          verbose: bool = False) -> dict:
    """Run the real ServerApp and ClientApp on Flower's Ray simulation engine. Returns what the
    ServerApp recorded: history (one entry per round), privacy ledger, refusals, early stop."""
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    from client.app import app as client_app
    from server.app import make_server_app

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    outcome: dict = {}
    server_app = make_server_app(cfg, run_dir, echo, outcome)
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=cfg.sites,
                   backend_config=backend_config(verbose), verbose_logging=verbose)
    history = outcome.get("history")
    finished = history and (history[-1]["round"] == cfg.rounds or outcome.get("stopped"))
    if not finished:
        done = history[-1]["round"] if history else "no"
        raise RuntimeError(f"the simulation stopped after {done} round(s) of {cfg.rounds}; "
                           f"see the log above and {run_dir / rundir.METRICS}")
    return outcome


def final_model(cfg: RunConfig, fed, run_dir: Path) -> torch.nn.Module:
    """The run's final global model, loaded from run_dir."""
    model = initial_model(cfg, fed)
    final = torch.load(run_dir / rundir.FINAL_MODEL, weights_only=False)
    model.load_state_dict(final["state_dict"])
    return model


def audit_final_model(cfg: RunConfig, fed, run_dir: Path) -> dict:
    """Membership inference on the final global model: each site's training members against its
    held-out test split, loss-threshold and difficulty-calibrated (initial model as reference)."""
    model, reference = final_model(cfg, fed, run_dir), initial_model(cfg, fed)
    pairs = [(site.train, site.test) for site in fed.sites]
    if fed.task.kind == "segmentation":
        return segmentation_audit(model, pairs, fed.task, reference, cfg.seed)
    return audit(model, pairs, fed.task, reference_model=reference, seed=cfg.seed)


def segmentation_audit(model: torch.nn.Module, pairs: list, task, reference: torch.nn.Module,
                       seed: int) -> dict:
    """`common.mia.audit` for segmentation models: the same balanced pairs, attacks and output
    layout, with `per_sample_seg_loss` (mean CE per image) as the per-sample loss."""
    per_site = []
    for i, pair in enumerate(pairs):
        sides = balanced(*pair, seed + i)
        losses = [per_sample_seg_loss(model, side, task) for side in sides]
        ref = [per_sample_seg_loss(reference, side, task) for side in sides]
        per_site.append({"loss-threshold": (-losses[0], -losses[1]),
                         "calibrated": (ref[0] - losses[0], ref[1] - losses[1])})

    def summarise(scores: dict) -> dict:
        return {attack: dataclasses.asdict(scores_to_result(attack, *sides))
                for attack, sides in scores.items()}

    pooled = {attack: tuple(np.concatenate([s[attack][k] for s in per_site]) for k in (0, 1))
              for attack in per_site[0]}
    return {"sites": {i: summarise(s) for i, s in enumerate(per_site)},
            "pooled": summarise(pooled)}


def simulate(cfg: RunConfig, echo: Callable[[str], None] = _say, verbose: bool = False,
             run_name: str | None = None) -> SimulationOutcome:
    """Partition, federate, run baselines, write the report. Returns the run dir and summary."""
    start = time.perf_counter()
    check_task_model(cfg)                         # a mask model for masks, a classifier for labels
    if cfg.data_path and Path(cfg.data_path).exists():
        # Sites may run in other processes (Ray workers) with another working directory.
        cfg = cfg.replace(data_path=str(Path(cfg.data_path).resolve()))
    dataset = for_task(load_dataset(cfg), cfg)
    for path, reason in dataset.skipped[:10]:
        echo(f"skipped {path}: {reason}")
    if len(dataset.skipped) > 10:
        echo(f"... and {len(dataset.skipped) - 10} more skipped files")
    check_dp_volume_mode(cfg, dataset.task)
    fed = build_federation(dataset, cfg)          # validates the partition before any work
    from server.strategies import build_strategy

    build_strategy(cfg, cfg.sites)                # validates strategy settings likewise
    run_dir = rundir.create_run_dir(cfg, run_name)
    echo(f"fedclinic: run directory {run_dir}")
    part = write_partition_report(fed, run_dir)
    echo(f"partition {cfg.partition!r}: {len(fed.sites)} sites, train sizes "
         f"{[len(s.train) for s in fed.sites]}, heterogeneity {part['heterogeneity']:.3f}")
    outcome = run_flower_simulation(cfg, run_dir, echo, verbose)
    history = outcome["history"]
    baselines = {name: BASELINE_RUNNERS[name](cfg, fed, echo) for name in cfg.baseline_list}
    counts = {str(s.site): {"train": len(s.train), "val": len(s.val), "test": len(s.test)}
              for s in fed.sites}
    summary = build_summary(cfg.to_dict(), history, baselines, counts, part["heterogeneity"],
                            time.perf_counter() - start)
    summary["run_dir"] = str(run_dir)
    if dataset.skipped:
        summary["skipped_files"] = [{"file": f, "reason": r} for f, r in dataset.skipped]
    summary["task"] = dataclasses.asdict(fed.task)
    if outcome.get("stopped"):
        summary["stopped_early"] = outcome["stopped"]
    if cfg.dp != "off":
        summary["privacy"] = privacy_summary(cfg, outcome)
    summary["audit"] = {"federated": audit_final_model(cfg, fed, run_dir)}
    if fed.task.kind == "segmentation":
        summary["audit"]["note"] = SEG_AUDIT_NOTE
        tests = {str(site.site): site.test for site in fed.sites}
        summary["overlays"] = write_overlays(final_model(cfg, fed, run_dir), fed.task, tests,
                                             run_dir)
    write_report(run_dir, summary, history)
    echo(f"report: {run_dir / rundir.REPORT}  (summary: {run_dir / rundir.SUMMARY})")
    return SimulationOutcome(run_dir, summary, history)
