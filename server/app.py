"""The ServerApp: the same coordinator for simulation (`fedclinic simulate`) and deployment."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import Result

from common import rundir
from common.config import RunConfig
from common.datasets import load_dataset
from common.models import build_model
from server.central_dp import wrap_client_dp
from server.recording import PrivacyBudgetSpent, RecordingStrategy, RoundLog
from server.strategies import build_strategy, sampled_sites


def run_federation(grid: Grid, cfg: RunConfig, run_dir: Path,
                   echo: Callable[[str], None] | None = None) -> tuple[Result | None, RoundLog]:
    """Train cfg.rounds rounds over the sites on `grid`; write metrics, checkpoints, final model."""
    dataset = load_dataset(cfg)
    task = dataset.task
    make_model = partial(build_model, cfg.model, spatial_dims=task.spatial_dims,
                         in_channels=task.channels, num_classes=task.num_classes,
                         norm=cfg.norm, width=cfg.width)
    torch.manual_seed(cfg.seed)
    initial = make_model().state_dict()
    meta = {"config": cfg.to_dict(), "task": task.__dict__}
    log = RoundLog(run_dir=run_dir, num_rounds=cfg.rounds, task=task, make_model=make_model,
                   global_test=dataset.test, meta=meta)
    if echo is not None:
        log.echo = echo
    base = build_strategy(cfg, cfg.sites)
    if cfg.dp == "client":
        base, plan = wrap_client_dp(base, cfg, cfg.sites, sampled_sites(cfg, cfg.sites))
        log.central, log.central_plan = base, plan
        log.echo(f"client-level DP: sigma {plan['noise_multiplier']:.3f}, clip "
                 f"{plan['clipping_norm']:g}, planned epsilon {plan['planned_epsilon']:.2f} at "
                 f"delta {plan['delta']:.2e}. Note: {plan['warning']}")
    strategy = RecordingStrategy(base, log)
    try:
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial),
                                num_rounds=cfg.rounds,
                                train_config=ConfigRecord(cfg.to_dict()),
                                evaluate_config=ConfigRecord(cfg.to_dict()),
                                evaluate_fn=log.evaluate)
        final, final_round = result.arrays.to_torch_state_dict(), cfg.rounds
    except (PrivacyBudgetSpent, PrivacyBudgetExhausted) as stop:
        log.echo(f"fedclinic: {stop}")
        latest = torch.load(run_dir / rundir.CHECKPOINT, weights_only=False)
        result, final, final_round = None, latest["state_dict"], latest["round"]
        log.stopped = str(stop)
    rundir.save_model(run_dir / rundir.FINAL_MODEL, final, {"round": final_round, **meta})
    return result, log


def make_server_app(cfg: RunConfig | None = None, run_dir: Path | None = None,
                    echo: Callable[[str], None] | None = None,
                    outcome: dict | None = None) -> ServerApp:
    """A ServerApp bound to a config and run dir (simulation), or reading Flower's run config
    (`[tool.flwr.app.config]` plus overrides) and creating its run dir (deployment)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_cfg = cfg or RunConfig.from_dict(dict(context.run_config))
        directory = run_dir
        if directory is None:
            directory = rundir.create_run_dir(run_cfg)
            print(f"fedclinic: run directory {directory}", file=sys.stderr, flush=True)
        result, log = run_federation(grid, run_cfg, directory, echo)
        if outcome is not None:
            outcome.update(result=result, history=log.history, stopped=log.stopped,
                           privacy=log.privacy, exhausted=log.exhausted,
                           central_plan=log.central_plan)

    return server_app


app = make_server_app()
