"""The train task of a site: E local epochs (DP-SGD under dp=sample, charged to the site's
ledger) on the global model the server sent; the reply carries the new weights and metrics."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict

from client.ledger import ledger_file, load_ledger, save_ledger
from client.replay import CachedReply, load_reply, request_digest, save_reply
from client.site import LocalSite, site_privacy
from client.task_setup import task_setup
from common.config import ConfigError, RunConfig
from common.packing import PACKED_KEY, pack_state
from common.privacy.ledger import BudgetExhausted
from common.privacy.planner import plan_from_config
from common.training.dp_local import DPTrainResult, train_local_dp
from common.training.local import train_local
from common.wire import BUDGET_EXHAUSTED_REASON, RUN_KEY, ReplyCode


def _train_private(msg: Message, context: Context, cfg: RunConfig, site: LocalSite,
                   model: torch.nn.Module, server_round: int, seed: int, mu: float,
                   global_params: list[torch.Tensor] | None
                   ) -> Message | tuple[DPTrainResult, dict[str, float]]:
    """DP-SGD for one round, charged to the site's ledger; refuse if it would break the budget."""
    cfg = site_privacy(cfg, context.node_config)
    plan = plan_from_config(cfg, len(site.train))
    run_key = str(msg.content["config"].get(RUN_KEY, ""))
    ledger = load_ledger(context, cfg.accountant, run_key)
    try:
        ledger.check_budget(cfg.target_epsilon, plan.noise_multiplier, plan.sample_rate,
                            plan.steps_per_round, plan.delta, site=site.site)
    except BudgetExhausted as refused:
        reason = (f"{BUDGET_EXHAUSTED_REASON}: site {site.site} has spent epsilon "
                  f"{refused.spent:.3f} of its budget {cfg.target_epsilon:g} (delta "
                  f"{plan.delta:.2e}); round {server_round} would bring it to "
                  f"{refused.epsilon:.3f}")
        return Message(Error(code=int(ReplyCode.BUDGET_EXHAUSTED), reason=reason), reply_to=msg)
    result = train_local_dp(model, site.train, site.task, cfg, epochs=cfg.local_epochs,
                            seed=seed, noise_multiplier=plan.noise_multiplier,
                            sample_rate=plan.sample_rate, steps=plan.steps_per_round,
                            proximal_mu=mu, global_params=global_params)
    ledger.record(result.noise_multiplier, result.sample_rate, result.steps)
    save_ledger(context, ledger, run_key)
    return result, {
        "epsilon": ledger.epsilon(plan.delta),   # cumulative: the whole run so far
        "target_epsilon": cfg.target_epsilon,   # the site's own budget (it may be lower)
        "delta": plan.delta,
        "noise_multiplier": result.noise_multiplier,
        "sample_rate": result.sample_rate,
        "dp_steps": ledger.steps,
    }


def local_seed(seed: int, server_round: int, site: int) -> int:
    """A distinct, reproducible seed per (run seed, round, site)."""
    return zlib.crc32(f"{seed}/{server_round}/{site}".encode())


def train_reply(msg: Message, context: Context) -> Message:
    cfg, site, model, server_round = task_setup(msg, context)
    mu = float(msg.content["config"].get("proximal-mu", 0.0))
    global_params = [p.detach().clone() for p in model.parameters()] if mu > 0 else None
    seed = local_seed(cfg.seed, server_round, site.site)
    start = time.perf_counter()
    privacy: dict[str, float] = {}
    if cfg.dp == "sample":
        cache, digest = _replay_key(msg, context, server_round)
        cached = load_reply(cache, digest)
        if cached is not None:        # asked again (the server resumed): same answer, no new cost
            return _reply(msg, cached.packed, {**cached.metrics, "replayed": 1.0})
        outcome = _train_private(msg, context, cfg, site, model, server_round, seed, mu,
                                 global_params)
        if isinstance(outcome, Message):
            return outcome                      # the round was refused: budget exhausted
        result, privacy = outcome
        privacy["replayed"] = 0.0
    elif cfg.dp in ("off", "client"):   # client-level DP clips and noises at the server
        result = train_local(model, site.train, site.task, cfg, epochs=cfg.local_epochs,
                             seed=seed, proximal_mu=mu, global_params=global_params)
    else:  # fail closed: never train without the privacy that was asked for
        raise ConfigError(f"dp={cfg.dp!r} is not supported by this site's fedclinic version")
    metrics = {
        **privacy,
        "num-examples": len(site.train),   # FedAvg weights by training samples, not batches
        "dp-weight": 1.0,                  # ... except under client-level DP: equal weights
        "train_loss": result.loss,
        "train_seconds": result.seconds,
        "client_seconds": time.perf_counter() - start,
        "steps": result.steps,
        "proximal_mu": mu,
        "site": site.site,
        "skipped_files": site.skipped,     # bad files the site left out (a count, no names)
    }
    packed = pack_state(model.state_dict())
    if cfg.dp == "sample":   # kept until the next round: a resumed server may ask this one again
        save_reply(cache, CachedReply(digest, server_round, packed.numpy(), metrics))
    return _reply(msg, packed, metrics)


def _replay_key(msg: Message, context: Context, server_round: int) -> tuple[Path | None, str]:
    """Where this site keeps its last DP reply of the run (next to its ledger), and the digest
    of this request (client.replay): a resumed server asking the same again gets the same."""
    config = msg.content["config"]
    run_key = str(config.get(RUN_KEY, ""))
    digest = request_digest(run_key, server_round, msg.content["arrays"][PACKED_KEY].numpy(),
                            dict(config))
    return ledger_file(context, run_key), digest


def _reply(msg: Message, packed: torch.Tensor | np.ndarray, metrics: dict[str, float]) -> Message:
    content = RecordDict({"arrays": ArrayRecord({PACKED_KEY: torch.as_tensor(packed)}),
                          "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
