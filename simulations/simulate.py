"""`fedclinic simulate`: a whole federation on one machine with Flower's simulation engine.

``task='segmentation'`` runs the same pipeline on masks (see `common.seg_data`): sites and
baselines report Dice/IoU/HD95/ASD, the membership-inference audit scores each image by its mean
pixel/voxel cross-entropy, and overlay PNGs of the final model's predictions go to
``run_dir/overlays/``.

Under sample-level DP the sites keep their test metrics local (`common.releases`), so the
simulator scores the final global model on each site's test split itself, as it scores the
baselines, and the report says so. The report also states the site policy every simulated site
ran under (`client.policy.policy_for`: ``--site-policy`` text, else `SIMULATION_POLICY`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from client.policy import PARTITION_ID, policy_for
from common import rundir
from common.config import RunConfig
from common.datasets import load_dataset
from common.datasets.base import Dataset
from common.mia import audit, per_sample_loss
from common.operating_point import positive_class
from common.partitions.federation import Federation, build_federation
from common.report.policy import policy_summary
from common.report.privacy import SamplePrivacy
from common.report.record import RunRecord, SiteSize, SkippedFile
from common.report.writer import write_report
from common.seg_data import check_dp_volume_mode, check_task_model, for_task
from common.training.losses import check_dp_loss
from common.training.prediction import evaluate
from common.training.seg_inference import per_sample_seg_loss
from common.wire import SITE_POLICY_KEY
from server.model_selection import BEST_MODEL
from simulations.baselines import BASELINE_RUNNERS, initial_model, scored_at
from simulations.overlays import write_overlays
from simulations.partition_report import write_partition_report

SEG_AUDIT_NOTE = ("Segmentation: the attacks score each image by its mean per-pixel (per-voxel) "
                  "cross-entropy under the model, the image-level analogue of the per-sample "
                  "loss used for classifiers.")
SHOWN_SKIPPED = 10
SITE_SCORES_NOTE = ("Per-site federated scores: the final global model scored by the simulator on "
                    "each site's test split, as the baselines are. Under DP the sites keep their "
                    "test metrics local (or release them noised), so these values were computed "
                    "by the simulator, not released by the sites.")


@dataclass(frozen=True)
class SimulationOutcome:
    run_dir: Path
    summary: dict            # summary.json as written (`RunRecord.to_json`)
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
                          verbose: bool = False, site_policy: str = "") -> RunRecord:
    """Run the real ServerApp and ClientApp on Flower's Ray simulation engine. Returns the run
    record the ServerApp made: history (one entry per round), privacy outcome, early stop.
    ``site_policy``: TOML text of the policy every simulated site enforces; it travels in the
    config the sites receive (`common.wire.SITE_POLICY_KEY`; the server only forwards it)."""
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    from client.app import app as client_app
    from server.app import make_server_app

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    records: list[RunRecord] = []
    forwarded = {SITE_POLICY_KEY: site_policy} if site_policy else None
    server_app = make_server_app(cfg, run_dir, echo, on_record=records.append,
                                 site_config=forwarded)
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=cfg.sites,
                   backend_config=backend_config(verbose), verbose_logging=verbose)
    record = records[-1] if records and records[-1].history else None
    if record is None or not (record.rounds == cfg.rounds or record.stopped_early):
        done = record.rounds if record is not None else "no"
        raise RuntimeError(f"the simulation stopped after {done} round(s) of {cfg.rounds}; "
                           f"see the log above and {run_dir / rundir.METRICS}")
    return record


def final_model(cfg: RunConfig, fed: Federation, run_dir: Path) -> torch.nn.Module:
    """The run's final global model, loaded from run_dir."""
    model = initial_model(cfg, fed)
    final = torch.load(run_dir / rundir.FINAL_MODEL, weights_only=False)
    model.load_state_dict(final["state_dict"])
    return model


def chosen_model(cfg: RunConfig, fed: Federation, run_dir: Path,
                 record: RunRecord) -> torch.nn.Module:
    """The global model the run chose on validation data (best_model.pt), else the final one."""
    if record.selection is None or not record.selection.selected:
        return final_model(cfg, fed, run_dir)
    model = initial_model(cfg, fed)
    model.load_state_dict(torch.load(run_dir / BEST_MODEL, weights_only=False)["state_dict"])
    return model


def audit_final_model(cfg: RunConfig, fed: Federation, run_dir: Path) -> dict:
    """Membership inference on the final global model: each site's training members against its
    held-out test split, loss-threshold and difficulty-calibrated (initial model as reference).
    Segmentation models are scored by `per_sample_seg_loss` (mean CE per image)."""
    model, reference = final_model(cfg, fed, run_dir), initial_model(cfg, fed)
    pairs = [(site.train, site.test) for site in fed.sites]
    loss = per_sample_seg_loss if fed.task.kind == "segmentation" else per_sample_loss
    return audit(model, pairs, fed.task, reference_model=reference, seed=cfg.seed, loss=loss)


def load_checked_dataset(cfg: RunConfig, echo: Callable[[str], None]) -> tuple[RunConfig, Dataset]:
    """The run's dataset for its task, after the checks that need no data; data_path absolute
    (sites may run in other processes, Ray workers, with another working directory)."""
    check_task_model(cfg)                         # a mask model for masks, a classifier for labels
    check_dp_loss(cfg)                            # no class weights from private labels under DP
    if cfg.data_path and Path(cfg.data_path).exists():
        cfg = cfg.replace(data_path=str(Path(cfg.data_path).resolve()))
    dataset = for_task(load_dataset(cfg), cfg)
    for path, reason in dataset.skipped[:SHOWN_SKIPPED]:
        echo(f"skipped {path}: {reason}")
    if len(dataset.skipped) > SHOWN_SKIPPED:
        echo(f"... and {len(dataset.skipped) - SHOWN_SKIPPED} more skipped files")
    check_dp_volume_mode(cfg, dataset.task)
    positive_class(dataset.task, cfg.positive_class)     # a --positive-class the task lacks
    return cfg, dataset


def prepare_run(cfg: RunConfig, dataset: Dataset, run_name: str | None,
                echo: Callable[[str], None]) -> tuple[Federation, Path, float]:
    """Partition and validate the strategy before any work; then create the run directory and
    write the partition report. Returns the federation, run dir and its heterogeneity."""
    fed = build_federation(dataset, cfg)
    from server.strategies import build_strategy

    build_strategy(cfg, cfg.sites)                # validates strategy settings likewise
    run_dir = rundir.create_run_dir(cfg, run_name)
    echo(f"fedclinic: run directory {run_dir}")
    part = write_partition_report(fed, run_dir)
    echo(f"partition {cfg.partition!r}: {len(fed.sites)} sites, train sizes "
         f"{[len(s.train) for s in fed.sites]}, heterogeneity {part['heterogeneity']:.3f}")
    return fed, run_dir, part["heterogeneity"]


def with_simulation_facts(record: RunRecord, dataset: Dataset, fed: Federation, run_dir: Path,
                          heterogeneity: float, baselines: dict, wall_seconds: float) -> RunRecord:
    """The server's record plus what only the simulator knows: baselines, the partition, sizes."""
    sizes = {str(s.site): SiteSize(len(s.train), len(s.val), len(s.test)) for s in fed.sites}
    return dataclasses.replace(
        record, wall_seconds=wall_seconds, heterogeneity=heterogeneity, site_sizes=sizes,
        baselines=baselines, run_dir=str(run_dir), task=fed.task,
        skipped_files=tuple(SkippedFile(str(f), r) for f, r in dataset.skipped))


def with_audit(record: RunRecord, cfg: RunConfig, fed: Federation, run_dir: Path) -> RunRecord:
    """The membership audit of the final model; segmentation also gets overlay PNGs."""
    record = dataclasses.replace(record, audit=audit_final_model(cfg, fed, run_dir))
    if fed.task.kind != "segmentation":
        return record
    tests = {str(site.site): site.test for site in fed.sites}
    overlays = write_overlays(final_model(cfg, fed, run_dir), fed.task, tests, run_dir)
    return dataclasses.replace(record, audit_note=SEG_AUDIT_NOTE, overlays=overlays)


def sites_withheld(record: RunRecord) -> bool:
    """True when the sites' own test metrics of the final model are not the exact scores: under
    sample-level DP (kept local or noised), or any site's last evaluate reply withheld them."""
    if record.config.dp == "sample":
        return True
    tests = [v.get("test") or {} for v in record.history[-1]["sites"].values()]
    return any(not t or t.get("withheld") for t in tests)


def with_site_scores(record: RunRecord, cfg: RunConfig, fed: Federation,
                     run_dir: Path) -> RunRecord:
    """The final global model scored by the simulator on each site's test split, as the
    federated per-site scores, when the sites did not release theirs exactly."""
    if not sites_withheld(record):
        return record
    model = chosen_model(cfg, fed, run_dir, record)
    scores = {str(site.site): evaluate(model, site.test, fed.task) for site in fed.sites}
    return dataclasses.replace(record, site_scores=scores, site_scores_note=SITE_SCORES_NOTE)


def with_operating_scores(record: RunRecord, cfg: RunConfig, fed: Federation,
                          run_dir: Path) -> RunRecord:
    """The chosen global model scored by the simulator on each site's test split at the
    operating point the server chose on validation data (the server scored the global test)."""
    selection = record.selection
    if selection is None or selection.operating_point is None:
        return record
    model = chosen_model(cfg, fed, run_dir, record)
    point = selection.operating_point
    sites = {str(s.site): m for s in fed.sites if (m := scored_at(point, model, s.test, fed))}
    glob = selection.at_operating_point or scored_at(point, model, fed.global_test, fed)
    return dataclasses.replace(record, selection=dataclasses.replace(
        selection, sites_at_operating_point=sites, at_operating_point=glob))


def with_policy(record: RunRecord, site_policy: str) -> RunRecord:
    """The site policy every simulated site ran under, chosen as each site chooses it."""
    if not isinstance(record.privacy, SamplePrivacy):
        return record
    policy = policy_for({PARTITION_ID: 0}, {SITE_POLICY_KEY: site_policy} if site_policy else {})
    summary = policy_summary(policy, dp=True)
    return dataclasses.replace(record, privacy=dataclasses.replace(record.privacy, policy=summary))


def with_selection_note(record: RunRecord, site_policy: str) -> RunRecord:
    """Under DP with nothing selected: say which rule of the simulated sites' policy kept their
    validation statistics local."""
    selection = record.selection
    if selection is None or selection.selected or record.config.dp != "sample":
        return record
    policy = policy_for({PARTITION_ID: 0}, {SITE_POLICY_KEY: site_policy} if site_policy else {})
    how = policy.test_metrics_release(dp=True)
    if how != "local":
        return record
    reason = (f"under DP the sites' policy ({policy.source}: test_metrics = "
              f"'{policy.test_metrics}', which under DP means 'local') kept their validation "
              f"statistics at the sites, so the server selected no model and chose no "
              f"operating point (a policy with test_metrics = 'noised' releases them noised "
              f"and charged in its metric-release rounds)")
    point = selection.operating_point
    if point is not None:
        point = dataclasses.replace(point, skipped="no validation statistics reached the "
                                                    "server (see the federated model above)")
    return dataclasses.replace(record, selection=dataclasses.replace(
        selection, skipped=reason, operating_point=point))


def simulate(cfg: RunConfig, echo: Callable[[str], None] = _say, verbose: bool = False,
             run_name: str | None = None, site_policy: str = "") -> SimulationOutcome:
    """Partition, federate, run baselines, write the report. Returns the run dir and summary.
    ``site_policy``: TOML text of the policy every simulated site enforces ('' = the
    simulation policy, `client.policy.SIMULATION_POLICY`)."""
    start = time.perf_counter()
    cfg, dataset = load_checked_dataset(cfg, echo)
    fed, run_dir, heterogeneity = prepare_run(cfg, dataset, run_name, echo)
    record = run_flower_simulation(cfg, run_dir, echo, verbose, site_policy)
    baselines = {name: BASELINE_RUNNERS[name](cfg, fed, echo) for name in cfg.baseline_list}
    record = with_simulation_facts(record, dataset, fed, run_dir, heterogeneity, baselines,
                                   time.perf_counter() - start)
    record = with_site_scores(with_policy(record, site_policy), cfg, fed, run_dir)
    record = with_operating_scores(with_selection_note(record, site_policy), cfg, fed,
                                   run_dir)
    record = with_audit(record, cfg, fed, run_dir)
    write_report(run_dir, record)
    echo(f"report: {run_dir / rundir.REPORT}  (summary: {run_dir / rundir.SUMMARY})")
    return SimulationOutcome(run_dir, record.to_json(), record.history)
