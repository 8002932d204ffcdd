"""The evaluate task of a site: the global model the server sent, scored on the site's own test
split."""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, RecordDict

from client.task_setup import task_setup
from common.training.prediction import evaluate


def evaluate_reply(msg: Message, context: Context) -> Message:
    cfg, site, model, _ = task_setup(msg, context)
    result = evaluate(model, site.test, site.task, batch_size=max(cfg.batch_size, 128))
    metrics = {k: float(v) for k, v in result.items() if k != "num_examples"}
    metrics.update({"num-examples": len(site.test), "dp-weight": 1.0, "site": site.site})
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
