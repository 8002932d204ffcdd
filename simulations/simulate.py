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
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from client.policy import PARTITION_ID, policy_for
from common import rundir
from common.config import ConfigError, RunConfig
from common.datasets import load_dataset
from common.datasets.base import Dataset, DataError
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
from common.tracking.base import Tracker
from common.tracking.files import log_report
from common.tracking.open import EXPERIMENT, check_tracking
from common.wire import PERSONAL_DIR_KEY, SITE_POLICY_KEY
from server.model_selection import BEST_MODEL, NOT_SENT
from simulations.baselines import BASELINE_RUNNERS, initial_model, scored_at
from simulations.engine import (RayResources, SimulationCrashed, backend_config, crash_aware,
                                simulated_site_app, start_ray)
from simulations.overlays import write_overlays
from simulations.personalised import personal_dir, with_personalised
from simulations.partition_report import write_partition_report
from simulations.progress import Progress, progress_for
from simulations.tracked_run import TrackedRun

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


def run_flower_simulation(cfg: RunConfig, run_dir: Path, echo: Callable[[str], None],
                          verbose: bool = False, site_policy: str = "",
                          resources: RayResources | None = None,
                          tracker: Tracker | None = None) -> RunRecord:
    """Run the real ServerApp and ClientApp on Flower's Ray simulation engine. Returns the run
    record the ServerApp made: history (one entry per round), privacy outcome, early stop.
    ``site_policy``: TOML text of the policy every simulated site enforces; it travels in the
    config the sites receive (`common.wire.SITE_POLICY_KEY`; the server only forwards it).
    ``resources``: a Ray of this machine's own (default) or an existing cluster, and what each
    site takes (`simulations.engine`). Whatever crashes (the engine, the ServerApp, a site), the
    run ends at once with SimulationCrashed carrying the first error's message."""
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    from server.app import make_server_app

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    resources = resources or RayResources()
    records: list[RunRecord] = []
    forwarded = {SITE_POLICY_KEY: site_policy} if site_policy else {}
    if cfg.personalize == "local-norm":          # the simulator scores the sites' own layers
        forwarded[PERSONAL_DIR_KEY] = str(personal_dir(run_dir))
    forwarded = forwarded or None
    server_app = make_server_app(cfg, run_dir, echo, on_record=records.append,
                                 site_config=forwarded, tracker=tracker)
    random.seed(cfg.seed)                  # the server's own draws (Flower's sampling, the
    np.random.seed(cfg.seed % 2**32)       # client-level DP noise): seeded in simulation
    at_once = start_ray(resources, verbose)
    if resources.cluster_address():
        echo(f"fedclinic: Ray cluster at {resources.cluster_address()}: {at_once} site(s) at "
             f"once ({resources.cpus_per_site:g} CPU, {resources.gpus_per_site:g} GPU each)")
    stopped, grids = threading.Event(), []
    try:
        run_simulation(server_app=crash_aware(server_app, stopped, grids),
                       client_app=simulated_site_app, num_supernodes=cfg.sites,
                       backend_config=backend_config(resources, verbose),
                       verbose_logging=verbose)
    except (ConfigError, DataError):      # the ServerApp's own clean errors: exit 2 as ever
        stopped.set()
        raise
    except Exception as exc:  # noqa: BLE001 - one message: the first error's
        stopped.set()                      # a ServerApp thread still waiting ends at once
        first = next((g.first_error for g in grids if g.first_error), "") or root_cause(exc)
        raise SimulationCrashed(f"the simulation crashed: {first}") from exc
    finally:
        stopped.set()
        _stop_ray()
    record = records[-1] if records and records[-1].history else None
    if record is None or not (record.rounds == cfg.rounds or record.stopped_early):
        done = record.rounds if record is not None else "no"
        raise RuntimeError(f"the simulation stopped after {done} round(s) of {cfg.rounds}; "
                           f"see the log above and {run_dir / rundir.METRICS}")
    return record


def root_cause(exc: BaseException) -> str:
    """The first error behind Flower's wrappers ("An error was encountered", "Simulation
    Runtime crashed", each raised ``from`` the one before): the innermost cause's type and
    message."""
    seen: set[int] = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"


def _stop_ray() -> None:
    """Leave Ray as it was found: disconnect from a cluster (it keeps running), stop ours."""
    import ray

    from simulations.ray_session import kept

    if kept():                       # a sweep's Ray outlives its cells (simulations.ray_session)
        return
    if ray.is_initialized():
        ray.shutdown()


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
    if cfg.init_from:                             # read by the ServerApp and the baselines
        cfg = cfg.replace(init_from=str(Path(cfg.init_from).expanduser().resolve()))
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
    initial_model(cfg, fed)                       # a --init-from file that does not fit
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
    sample-level DP (kept local or noised), any site's last evaluate reply withheld them, or not
    every site evaluated the last round (``fraction_evaluate`` below 1)."""
    if record.config.dp == "sample":
        return True
    last = record.history[-1]["sites"]
    if len(last) < record.config.sites:
        return True
    tests = [v.get("test") or {} for v in last.values()]
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
    point = selection.operating_point
    chosen = point is not None and point.kind != "argmax"     # from the noised class prior
    reason = (f"under DP the sites' policy ({policy.source}: test_metrics = "
              f"'{policy.test_metrics}', which under DP means 'local') kept their validation "
              f"statistics at the sites, so the server selected no model and "
              + ("set the operating point from the sites' noised training class counts" if
                 chosen else "chose no operating point")
              + " (a policy with test_metrics = 'noised' releases them noised and charged in "
                "its metric-release rounds)")
    if point is not None and point.skipped == NOT_SENT:
        point = dataclasses.replace(point, skipped="no validation statistics reached the "
                                                    "server (see the federated model above)")
    return dataclasses.replace(record, selection=dataclasses.replace(
        selection, skipped=reason, operating_point=point))


def simulate(cfg: RunConfig, echo: Callable[[str], None] = _say, verbose: bool = False,
             run_name: str | None = None, site_policy: str = "",
             resources: RayResources | None = None, *, progress: Progress | None = None,
             experiment: str = EXPERIMENT,
             track_tags: dict[str, str] | None = None) -> SimulationOutcome:
    """Partition, federate, run baselines, write the report. Returns the run dir and summary.
    ``site_policy``: TOML text of the policy every simulated site enforces ('' = the
    simulation policy, `client.policy.SIMULATION_POLICY`); ``resources``: where the sites run
    (`simulations.engine.RayResources`: this machine by default, or a Ray cluster).
    ``progress``: the bars to draw on (default: bars when printing to a terminal, else none);
    ``experiment`` / ``track_tags``: where ``cfg.track`` files the run and what it tags it."""
    progress = progress or (progress_for() if echo is _say else Progress())
    with TrackedRun(progress, experiment, track_tags) as session:
        return _simulate(cfg, echo, verbose, run_name, site_policy, resources, session)


def _simulate(cfg: RunConfig, echo: Callable[[str], None], verbose: bool,
              run_name: str | None, site_policy: str, resources: RayResources | None,
              session: TrackedRun) -> SimulationOutcome:
    """`simulate`'s work; ``session`` holds its trackers (closed by the caller) and progress."""
    start = time.perf_counter()
    check_tracking(cfg)                 # a missing extra is one line before any work
    cfg, dataset = load_checked_dataset(cfg, echo)
    fed, run_dir, heterogeneity = prepare_run(cfg, dataset, run_name, echo)
    tracker = session.open(cfg, run_dir, echo)
    record = run_flower_simulation(cfg, run_dir, echo, verbose, site_policy, resources, tracker)
    baselines = {name: BASELINE_RUNNERS[name](cfg, fed, echo, session.progress)
                 for name in cfg.baseline_list}
    record = with_simulation_facts(record, dataset, fed, run_dir, heterogeneity, baselines,
                                   time.perf_counter() - start)
    record = with_site_scores(with_policy(record, site_policy), cfg, fed, run_dir)
    record = with_operating_scores(with_selection_note(record, site_policy), cfg, fed,
                                   run_dir)
    chosen = record
    record = with_personalised(record, cfg, fed, run_dir,
                               lambda: chosen_model(cfg, fed, run_dir, chosen), echo)
    record = with_audit(record, cfg, fed, run_dir)
    write_report(run_dir, record)
    log_report(tracker, run_dir, record.to_json())
    echo(f"report: {run_dir / rundir.REPORT}  (summary: {run_dir / rundir.SUMMARY})")
    return SimulationOutcome(run_dir, record.to_json(), record.history)
