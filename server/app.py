"""The ServerApp: the same coordinator for simulation (`fedclinic simulate`) and deployment."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import Result, Strategy

from common import rundir
from common.packing import PACKED_KEY
from common.config import RESUMABLE_CHANGES, ConfigError, RunConfig
from common.datasets import load_dataset
from common.models import build_model
from common.operating_point import positive_class
from common.training.losses import check_dp_loss
from common.training.init import initial_state
from common.training.local_norm import pack_federated, unpack_federated
from common.report.privacy import privacy_outcome
from common.report.record import RunRecord
from common.report.selection import Selection
from common.report.writer import write_report
from common.tracking.base import Tracker
from common.tracking.files import log_report
from common.tracking.open import open_trackers
from common.wire import RUN_KEY
from runtime.transport import use_fast_object_pulls
from server.central_dp import wrap_client_dp
from server.checkpoint import (load_resume_point, restore_strategy_state, rng_state,
                               set_rng_state, strategy_state)
from server.model_selection import (EarlyStopped, ModelSelection, chosen_state,
                                    score_at_operating_point)
from server.recording_strategy import PrivacyBudgetSpent, QuorumLost, RecordingStrategy
from server import run_events
from server.round_log import RoundLog
from server.superlink_child import end_with_parent
from server.strategies import build_strategy, quorum, sampled_sites


RUNS_DIR_ENV = "FEDCLINIC_RUNS_DIR"   # set by `fedclinic server`: where deployed runs live


def _wait_for_sites(grid: Grid, cfg: RunConfig, log: RoundLog) -> None:
    """Give every site up to one round timeout to connect; go on with the quorum after that."""
    deadline = time.monotonic() + cfg.round_timeout
    need = min(cfg.min_sites, cfg.sites)
    told = -1
    while True:
        online = len(list(grid.get_node_ids()))
        if online >= cfg.sites:
            return
        if online != told:
            log.echo(f"fedclinic: waiting for sites: {online} of {cfg.sites} connected (the run "
                     f"starts when all are, or after {cfg.round_timeout:g} s with at least "
                     f"{need}; --sites sets how many the federation has)")
            told = online
        if time.monotonic() > deadline and online >= need:
            log.echo(f"fedclinic: {online} of {cfg.sites} sites connected after "
                     f"{cfg.round_timeout:g} s; starting with them (quorum {need})")
            return
        time.sleep(1.0)


def run_federation(grid: Grid, cfg: RunConfig, run_dir: Path,
                   echo: Callable[[str], None] | None = None,
                   site_config: Mapping[str, str] | None = None,
                   tracker: Tracker | None = None) -> tuple[Result | None, RoundLog]:
    """Train cfg.rounds rounds over the sites on `grid`; write metrics, checkpoints, final model.
    If `run_dir` holds a checkpoint and cfg.resume names it, continue after its last round.
    ``site_config``: extra keys sent to every site with the run config (simulation: the site
    policy the simulated sites enforce; `common.wire.EXTRA_CONFIG_KEYS`). ``tracker`` gets
    every round's metrics (`--track`)."""
    check_dp_loss(cfg)      # class weights from private labels: refused under DP, before any round
    log, initial = _round_log(cfg, run_dir, echo)
    if tracker is not None:
        log.tracker = tracker
    strategy = _recording_strategy(cfg, log)
    first_round = 1
    if cfg.resume:
        initial, first_round = _resume(strategy, log, cfg.rounds)
    if run_events.deployed():           # this start of the run, for the report's parts
        run_events.part_started(run_dir, first_round, resumed=bool(cfg.resume))
    _wait_for_sites(grid, cfg, log)
    result, final, final_round = _train(grid, strategy, cfg, log, initial, first_round,
                                        site_config)
    rundir.save_model(run_dir / rundir.FINAL_MODEL, final, {"round": final_round, **log.meta})
    return result, log


def _round_log(cfg: RunConfig, run_dir: Path, echo: Callable[[str], None] | None
               ) -> tuple[RoundLog, dict]:
    """The run's RoundLog (global test split, model factory, metadata) and the initial weights
    (seeded by cfg.seed)."""
    dataset = load_dataset(cfg)
    task = dataset.task
    make_model = partial(build_model, cfg.model, spatial_dims=task.spatial_dims,
                         in_channels=task.channels, num_classes=task.num_classes,
                         norm=cfg.norm, width=cfg.width)
    torch.manual_seed(cfg.seed)
    model = make_model()
    init = initial_state(cfg.init_from, model, task.num_classes)   # --init-from, else seeded
    initial = model.state_dict()
    log = RoundLog(run_dir=run_dir, num_rounds=cfg.rounds, task=task, make_model=make_model,
                   global_test=_global_test(cfg, dataset), meta={"config": cfg.to_dict(), "task": task.__dict__})
    log.unpack = partial(unpack_federated, personalize=cfg.personalize, base=initial)
    log.selection = ModelSelection(task, patience=cfg.patience,
                                   target_sensitivity=cfg.target_sensitivity,
                                   positive=positive_class(task, cfg.positive_class),
                                   prior_adjusted=cfg.loss == "logit_adjusted")
    if echo is not None:
        log.echo = echo
    if init is not None:
        log.echo(init.note)
    return log, initial


def _global_test(cfg: RunConfig, dataset):
    """The split the global model is scored on each round: the simulation's global test split;
    deployed, the operator's held-out set (`fedclinic server --global-test PATH`: a .npz in the
    MedMNIST layout, its test split, or a DICOM/MSD folder) or none (evaluation per site)."""
    if not run_events.deployed():
        return dataset.test
    path = os.environ.get(run_events.GLOBAL_TEST_ENV)
    if not path:
        return None
    folder = Path(path)
    kind = ("medmnist" if folder.suffix == ".npz" else
            "msd" if (folder / "dataset.json").exists() else "dicom")
    return load_dataset(cfg.replace(dataset=kind, data_path=str(folder))).test


def deployed_record(record: RunRecord, log: RoundLog) -> RunRecord:
    """A deployed run's record: its sites by name, their declared data, its global test set and
    its parts (the wall time adds up every part, a resumed run's included)."""
    dep = run_events.deployment(log.run_dir, log.sites_of_nodes)
    if dep.global_test and log.global_test is not None:
        dep = dataclasses.replace(dep, global_test=f"{dep.global_test} "
                                                   f"({len(log.global_test.images)} samples)")
    return dataclasses.replace(record, deployment=dep,
                               wall_seconds=dep.wall_seconds or record.wall_seconds)


def _recording_strategy(cfg: RunConfig, log: RoundLog) -> RecordingStrategy:
    """The configured strategy (under client-level DP inside Flower's clipping-and-noise
    wrapper), wrapped to record every round in `log` and checkpoint its state."""
    base = build_strategy(cfg, cfg.sites)
    if cfg.dp == "client":
        base = _with_client_dp(base, cfg, log)
    strategy = RecordingStrategy(base, log)
    log.quorum = partial(quorum, cfg)
    log.checkpoint_state = lambda: {"strategy": strategy_state(strategy), "rng": rng_state()}
    return strategy


def _with_client_dp(base: Strategy, cfg: RunConfig, log: RoundLog) -> Strategy:
    """Wrap `base` for client-level DP; `log` keeps the wrapper (for the epsilon spent) and the
    plan, which is printed with its caveat."""
    wrapper, plan = wrap_client_dp(base, cfg, cfg.sites, sampled_sites(cfg, cfg.sites))
    log.central, log.central_plan = wrapper, plan
    log.echo(f"client-level DP: sigma {plan.noise_multiplier:.3f}, clip "
             f"{plan.clipping_norm:g}, planned epsilon {plan.planned_epsilon:.2f} at "
             f"delta {plan.delta:.2e}. Note: {plan.warning}")
    return wrapper


def _resume(strategy: RecordingStrategy, log: RoundLog, rounds: int) -> tuple[dict, int]:
    """Restore the strategy, RNG, history and privacy ledgers from the run's last checkpoint;
    return its weights and the first round still to train."""
    point = load_resume_point(log.run_dir)
    restore_strategy_state(strategy, point.strategy)
    set_rng_state(point.rng)
    log.history = point.history
    log.privacy = point.privacy.get("sites", {})
    log.exhausted = {int(k): v for k, v in point.privacy.get("exhausted", {}).items()}
    log.refused = {int(k): v for k, v in point.privacy.get("refused", {}).items()}
    if log.selection is not None:
        log.selection.replay(point.history)
    log.echo(f"fedclinic: resuming {log.run_dir.name} after round {point.round}; "
             f"rounds {point.round + 1}..{rounds} follow")
    run_events.emit("resumed", after_round=point.round, rounds=rounds)
    return point.state_dict, point.round + 1


def _train(grid: Grid, strategy: RecordingStrategy, cfg: RunConfig, log: RoundLog,
           initial: dict, first_round: int, site_config: Mapping[str, str] | None = None
           ) -> tuple[Result | None, dict, int]:
    """Flower's round loop from `first_round` on; the result, the final weights and their round.
    A spent privacy budget or a lost quorum ends the run early at its last checkpoint."""
    config = ConfigRecord({**cfg.to_dict(), RUN_KEY: log.run_dir.name, **(site_config or {})})
    try:
        model = log.make_model()            # local-norm: the norm layers never travel
        packed = ArrayRecord({PACKED_KEY: pack_federated(model, cfg.personalize, initial)})
        result = strategy.start(grid=grid, initial_arrays=packed,
                                num_rounds=cfg.rounds, timeout=cfg.round_timeout,
                                train_config=config, evaluate_config=config,
                                evaluate_fn=log.evaluate, first_round=first_round)
    except (PrivacyBudgetSpent, PrivacyBudgetExhausted, QuorumLost, EarlyStopped) as stop:
        log.echo(f"fedclinic: {stop}")
        latest = torch.load(log.run_dir / rundir.CHECKPOINT, weights_only=False)
        log.stopped = str(stop)
        return None, latest["state_dict"], latest["round"]
    final = log.unpack(result.arrays[PACKED_KEY].numpy(), model)
    return result, final, cfg.rounds


def deployment_run_dir(cfg: RunConfig) -> Path:
    """The run directory of a deployed run: new under the server's runs folder, or the one
    cfg.resume names (which must exist there)."""
    parent = Path(os.environ.get(RUNS_DIR_ENV) or cfg.output_dir)
    if not cfg.resume:
        return rundir.create_run_dir(cfg.replace(output_dir=str(parent)))
    directory = parent / cfg.resume
    if not (directory / rundir.CHECKPOINT).exists():
        known = sorted(p.name for p in parent.glob("*") if (p / rundir.CHECKPOINT).exists())
        raise ConfigError(f"resume={cfg.resume!r}: no run with a checkpoint at {directory}; "
                          f"resumable runs: {', '.join(known) or 'none'}")
    return directory


def resumed_config(requested: RunConfig, run_dir: Path) -> RunConfig:
    """The config a resumed run continues with: the one it started with, plus the changes a
    resume may make (more rounds, another timeout or quorum). Anything else is an error."""
    saved = RunConfig.load(run_dir / rundir.CONFIG)
    default = RunConfig()
    changes = {}
    for name, value in requested.to_dict().items():
        if value == getattr(saved, name) or value == getattr(default, name):
            continue
        if name not in RESUMABLE_CHANGES:
            raise ConfigError(f"resume: {name}={value!r} differs from the run's {name}="
                              f"{getattr(saved, name)!r}; a resumed run may change only "
                              f"{', '.join(RESUMABLE_CHANGES)}")
        changes[name] = value
    return saved.replace(**{**changes, "resume": requested.resume})


def run_record(cfg: RunConfig, log: RoundLog, wall_seconds: float) -> RunRecord:
    """What the server knows of the run: its rounds, privacy outcome (each site's own ledger
    and budget, or the client-level epsilon) and why it stopped early, if it did."""
    privacy = privacy_outcome(cfg, log.history, log.privacy, log.exhausted, log.central_plan,
                              refused=log.refused)
    return RunRecord(config=cfg, history=log.history, wall_seconds=wall_seconds,
                     privacy=privacy, stopped_early=log.stopped, selection=_selection(log))


def _selection(log: RoundLog) -> Selection | None:
    """The chosen global model (best_model.pt, else the final one) and its operating point,
    scored on the server's global test split at that point."""
    if log.selection is None or not log.history:
        return None
    stopped = log.stopped if log.selection.should_stop() else ""
    selection = log.selection.outcome(log.history[-1]["round"], stopped=stopped)
    state = chosen_state(log.run_dir, selection)
    if state is None and (log.run_dir / rundir.FINAL_MODEL).exists():
        state = torch.load(log.run_dir / rundir.FINAL_MODEL, weights_only=False)["state_dict"]
    if state is None:
        return selection
    model = log.make_model()
    model.load_state_dict(state)
    return score_at_operating_point(selection, model, log.global_test, log.task)


def write_deployment_report(record: RunRecord, run_dir: Path) -> None:
    """summary.json, sites.md, the learning curve and report.md of a deployed run (no
    baselines: the server never sees site data)."""
    write_report(run_dir, record)
    print(f"fedclinic: report {run_dir / rundir.REPORT}", flush=True)


def make_server_app(cfg: RunConfig | None = None, run_dir: Path | None = None,
                    echo: Callable[[str], None] | None = None,
                    on_record: Callable[[RunRecord], None] | None = None,
                    site_config: Mapping[str, str] | None = None,
                    tracker: Tracker | None = None) -> ServerApp:
    """A ServerApp bound to a config and run dir (simulation), or reading Flower's run config
    (`[tool.flwr.app.config]` plus overrides) and creating its run dir (deployment). Once the
    run is done, a deployed ServerApp writes the report; ``on_record`` gets the run record.
    ``tracker``: the simulator's (it logs the report itself); without one, the ServerApp opens
    the trackers ``track`` names and sends them the report too."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        use_fast_object_pulls()
        run_cfg = cfg or RunConfig.from_dict(dict(context.run_config))
        directory = run_dir
        if directory is None:
            directory = deployment_run_dir(run_cfg)
            if run_cfg.resume:
                run_cfg = resumed_config(run_cfg, directory)
            print(f"fedclinic: run directory {directory}", flush=True)
            run_events.bind(context.run_id, directory.name)        # `fedclinic server`'s console
            if run_events.deployed():
                end_with_parent()       # no ServerApp outlives its SuperExec (superlink_child)
            if not run_cfg.resume:
                run_events.emit("started", rounds=run_cfg.rounds, sites=run_cfg.sites)
        started = time.perf_counter()
        own = tracker is None
        track = open_trackers(run_cfg, directory, tags={"kind": "deployment"}) if own else tracker
        try:
            _, log = run_federation(grid, run_cfg, directory, echo, site_config, track)
            if cfg is None:
                run_events.part_finished(directory, run_events.outcome(log.stopped, run_cfg))
            record = run_record(run_cfg, log, time.perf_counter() - started)
            if cfg is None:                        # deployment: the ServerApp writes the report
                record = deployed_record(record, log)
                write_deployment_report(record, directory)
                run_events.emit("finished", outcome=run_events.outcome(log.stopped, run_cfg))
            if own:
                log_report(track, directory, record.to_json())
        except BaseException as exc:
            run_events.emit("finished", outcome=f"failed ({type(exc).__name__}: {exc})")
            if own:
                track.close(ok=False)
            raise
        if own:
            track.close()
        if on_record is not None:
            on_record(record)

    return server_app


app = make_server_app()
