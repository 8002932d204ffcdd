"""The train task of a site: E local epochs (DP-SGD under dp=sample, charged to the site's
ledger) on the global model the server sent; the reply carries the new weights and metrics.

The server's run config is a request. The site's policy (client.policy) decides first whether
it is answered at all (client.admission): a request outside it gets a `policy-refused` error
reply naming the rule (code 4033) before any data is read; a run past its own budget gets
`budget-exhausted` (4030). Under DP the reply carries only what the policy lets leave.
"""

from __future__ import annotations

import logging
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict

from client.admission import Admitted, admit, check_request
from client.fingerprint import data_fingerprint
from client.ledger import SiteLedger, site_ledger
from client.personal_state import norm_store, packed_norms
from client.policy import PolicyRefused, SitePolicy, is_simulated, policy_for
from client.release import releases_for, sample_count, train_class_counts, train_metrics
from client.replay import CachedReply, load_reply, reply_path, request_digest, save_reply
from client.site import LocalSite, site_privacy
from client.site_audit import save_last_global
from client.task_setup import task_setup
from common.config import ConfigError, RunConfig
from common.packing import PACKED_KEY
from common.privacy.ledger import BudgetExhausted
from common.training.dp_local import DPTrainResult, train_local_dp
from common.training.local import train_local
from common.training.local_norm import local_keys, pack_federated
from common.training.schedule import round_window
from common.wire import BUDGET_EXHAUSTED_REASON, EXTRA_CONFIG_KEYS, RUN_KEY, ReplyCode

log = logging.getLogger("fedclinic.site")

DP_KIND = "dp-sgd"       # the ledger entry of a DP-SGD round


def local_seed(seed: int, server_round: int, site: int) -> int:
    """A distinct, reproducible seed per (run seed, round, site)."""
    return zlib.crc32(f"{seed}/{server_round}/{site}".encode())


def requested_config(msg: Message) -> RunConfig:
    """The run config the server sent (its extra keys left out), as a request to check."""
    config = dict(msg.content["config"])
    return RunConfig.from_dict({k: v for k, v in config.items() if k not in EXTRA_CONFIG_KEYS})


def site_policy_of(msg: Message, context: Context) -> SitePolicy:
    """The policy in force for this task; PolicyRefused("policy_file") when the site's own
    policy file cannot be used (the detail, which names a local path, stays in the site's
    log)."""
    try:
        return policy_for(context.node_config, msg.content["config"])
    except ConfigError as exc:
        log.error("the site's policy cannot be used, so it refuses every task: %s", exc)
        raise PolicyRefused("policy_file", "the site's policy cannot be read or is invalid; "
                                           "its operator must fix it (see the site's log)"
                            ) from None


def refusal(msg: Message, refused: PolicyRefused) -> Message:
    """The error reply of a request outside the site's policy (audited like every reply)."""
    return Message(Error(code=int(ReplyCode.POLICY_REFUSED), reason=str(refused)), reply_to=msg)


def train_reply(msg: Message, context: Context) -> Message:
    try:
        policy = site_policy_of(msg, context)
        check_request(requested_config(msg), policy)     # before any data is read
    except PolicyRefused as refused:
        return refusal(msg, refused)
    cfg, site, model, server_round = task_setup(msg, context)
    save_last_global(context.node_config, model, cfg, server_round, _run_key(msg))  # site audit
    mu = float(msg.content["config"].get("proximal-mu", 0.0))
    global_params = [p.detach().clone() for p in model.parameters()] if mu > 0 else None
    seed = local_seed(cfg.seed, server_round, site.site)
    start = time.perf_counter()
    if cfg.dp == "sample":
        return _train_private(msg, context, cfg, policy, site, model, server_round, seed, mu,
                              global_params, start)
    if cfg.dp not in ("off", "client"):   # fail closed: never train without the asked privacy
        raise ConfigError(f"dp={cfg.dp!r} is not supported by this site's fedclinic version")
    # client-level DP clips and noises at the server; only a policy without require_dp lets
    # either run here (check_request)
    result = train_local(model, site.train, site.task, cfg, epochs=cfg.local_epochs,
                         seed=seed, proximal_mu=mu, global_params=global_params,
                         window=round_window(cfg, server_round))
    rel = releases_for(context.node_config, policy, dp=False, run_key=_run_key(msg),
                       server_round=server_round, seed=seed)
    metrics = train_metrics(rel, result, site, sample_count(rel, len(site.train)),
                            proximal_mu=mu, client_seconds=time.perf_counter() - start)
    packed = outgoing_weights(msg, context, cfg, site, model, server_round)
    return _reply(msg, packed, metrics)


def _train_private(msg: Message, context: Context, cfg: RunConfig, policy: SitePolicy,
                   site: LocalSite, model: torch.nn.Module, server_round: int, seed: int,
                   mu: float, global_params: list[torch.Tensor] | None, start: float
                   ) -> Message:
    """DP-SGD for one admitted round, charged to the site's ledger: the same answer again for a
    request asked twice (a resumed server), a refusal outside the policy or the budget."""
    cache, digest = _replay_key(msg, context, server_round)
    cached = load_reply(cache, digest)
    if cached is not None:        # asked again (the server resumed): same answer, no new cost
        return _reply(msg, cached.packed, {**cached.metrics, "replayed": 1.0})
    cfg = site_privacy(cfg, context.node_config)
    run_key = _run_key(msg)
    ledger = site_ledger(context, data_fingerprint(site, context.node_config), cfg.accountant)
    try:
        admitted = admit(cfg, policy, len(site.train), ledger, run_key, server_round)
    except PolicyRefused as refused:
        return refusal(msg, refused)
    except BudgetExhausted as spent:
        return _budget_refusal(msg, spent, site, server_round)
    plan = admitted.plan
    deployment = not is_simulated(context.node_config)
    rel = releases_for(context.node_config, policy, dp=True, run_key=run_key,
                       server_round=server_round, seed=seed, ledger=ledger, delta=plan.delta)
    # admitted with the round: charged once per run; before training, whose logit-adjusted
    # loss takes its prior from the noised class counts
    count = sample_count(rel, len(site.train), train_class_counts(site))
    prior = np.array(count.classes) if count.classes else None
    result = train_local_dp(model, site.train, site.task, admitted.cfg, epochs=cfg.local_epochs,
                            seed=seed, noise_multiplier=plan.noise_multiplier,
                            sample_rate=plan.sample_rate, steps=plan.steps_per_round,
                            proximal_mu=mu, global_params=global_params,
                            secure=policy.secure_randomness and deployment,
                            window=round_window(cfg, server_round), prior_counts=prior)
    ledger.append(run_key=run_key, server_round=server_round, kind=DP_KIND,
                  noise_multiplier=result.noise_multiplier, sample_rate=result.sample_rate,
                  steps=result.steps, delta=plan.delta)
    metrics = train_metrics(rel, result, site, count, proximal_mu=mu,
                            client_seconds=time.perf_counter() - start,
                            privacy=privacy_metrics(result, admitted, ledger, run_key))
    packed = outgoing_weights(msg, context, cfg, site, model, server_round)
    # kept until the next round: a resumed server may ask this one again
    save_reply(cache, CachedReply(digest, server_round, packed.numpy(), metrics))
    return _reply(msg, packed, {**metrics, "replayed": 0.0})


def outgoing_weights(msg: Message, context: Context, cfg: RunConfig, site: LocalSite,
                     model: torch.nn.Module, server_round: int) -> torch.Tensor:
    """The packed weights of the reply: every tensor, or under local-norm all but the
    normalisation layers', which the site keeps for its next round and its evaluation
    (`client.personal_state`) and which never leave it."""
    keys = local_keys(model, cfg.personalize)
    if keys:
        store = norm_store(context.node_config, msg.content["config"], context, site.site)
        store.save(server_round, packed_norms(model, keys))
    return pack_federated(model, cfg.personalize)


def _budget_refusal(msg: Message, spent: BudgetExhausted, site: LocalSite,
                    server_round: int) -> Message:
    reason = (f"{BUDGET_EXHAUSTED_REASON}: site {site.site} has spent epsilon {spent.spent:.3f} "
              f"of the run's budget {spent.budget:g} (delta {spent.delta:.2e}); round "
              f"{server_round} would bring it to {spent.epsilon:.3f}")
    return Message(Error(code=int(ReplyCode.BUDGET_EXHAUSTED), reason=reason), reply_to=msg)


def privacy_metrics(result: DPTrainResult, admitted: Admitted, ledger: SiteLedger, run_key: str
                    ) -> dict[str, float]:
    """The privacy fields of a DP train reply (all public: the plan, the ledger's totals, the
    policy's id), after this round was charged."""
    plan = admitted.plan
    run, lifetime = ledger.run(run_key), ledger.lifetime()
    return {
        "epsilon": run.epsilon(plan.delta),        # the whole run so far at this site
        "target_epsilon": admitted.budget,         # the site's own budget for the run
        "delta": plan.delta,
        "noise_multiplier": result.noise_multiplier,
        "sample_rate": result.sample_rate,
        "dp_steps": sum(e.steps for e in ledger.entries            # DP-SGD steps only
                        if e.run == run_key and e.kind == DP_KIND),
        "lifetime_epsilon_spent": lifetime.epsilon(plan.delta),
        "lifetime_epsilon_budget": admitted.policy.lifetime_epsilon,
        "policy_id": admitted.policy.policy_id,
        "secure_randomness": float(result.secure),
    }


def _run_key(msg: Message) -> str:
    return str(msg.content["config"].get(RUN_KEY, ""))


def _replay_key(msg: Message, context: Context, server_round: int) -> tuple[Path | None, str]:
    """Where this site keeps its last DP reply of the run (in its ledger folder), and the
    digest of this request (client.replay): a resumed server asking the same again gets the
    same."""
    config = msg.content["config"]
    run_key = _run_key(msg)
    digest = request_digest(run_key, server_round, msg.content["arrays"][PACKED_KEY].numpy(),
                            dict(config))
    return reply_path(context.node_config, run_key), digest


def _reply(msg: Message, packed: torch.Tensor | np.ndarray, metrics: dict[str, float]) -> Message:
    content = RecordDict({"arrays": ArrayRecord({PACKED_KEY: torch.as_tensor(packed)}),
                          "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
