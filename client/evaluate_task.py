"""The evaluate task of a site: the global model the server sent, scored on the site's own test
split, and answered with what the site's policy lets leave (client.release).

A request outside the policy is refused like a train request (`policy-refused`, code 4033).
Under DP (dp=sample) the test metrics stay local unless the policy releases them noised and
charged. A deployed site also treats as DP an evaluate request of a run its ledger holds DP-SGD
rounds of, whatever dp the request claims: a coordinator cannot get exact test metrics of a
DP run by asking with dp=off.
"""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, RecordDict

from client.admission import check_request, site_delta
from client.fingerprint import data_fingerprint
from client.ledger import site_ledger
from client.personalize_task import finetune_at_site
from client.policy import PolicyRefused, is_simulated
from client.release import evaluate_metrics, releases_for
from client.site import site_privacy
from client.task_setup import task_setup
from client.train_task import local_seed, refusal, requested_config, site_policy_of
from common.wire import RUN_KEY


def evaluate_reply(msg: Message, context: Context) -> Message:
    try:
        policy = site_policy_of(msg, context)
        check_request(requested_config(msg), policy)     # before any data is read
    except PolicyRefused as refused:
        return refusal(msg, refused)
    cfg, site, model, server_round = task_setup(msg, context)
    cfg = site_privacy(cfg, context.node_config)
    run_key = str(msg.content["config"].get(RUN_KEY, ""))
    dp, ledger, delta = cfg.dp == "sample", None, None
    how = policy.test_metrics_release(dp)
    deployed = not is_simulated(context.node_config)
    if how == "noised" or (how == "exact" and deployed):
        ledger = site_ledger(context, data_fingerprint(site, context.node_config),
                             cfg.accountant)
        dp = dp or bool(ledger.run(run_key).history)     # a DP run asked with dp=off
        delta = site_delta(policy, cfg, len(site.train))
    rel = releases_for(context.node_config, policy, dp=dp, run_key=run_key,
                       server_round=server_round, ledger=ledger, delta=delta,
                       seed=local_seed(cfg.seed, server_round, site.site))
    metrics = evaluate_metrics(rel, model, site, cfg)
    # --personalize finetune, deployed, last round: the site's own model, kept at the site
    finetune_at_site(context.node_config, msg.content["config"], cfg, site, model, server_round)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
