"""Per-round records: per-site replies, global evaluation, metrics.jsonl and checkpoints.

`RecordingStrategy` wraps any Flower strategy (like Flower's DP wrappers do) and hands each round's
replies to a `RoundLog` before delegating aggregation; `RoundLog.evaluate` is the strategy's
`evaluate_fn`, called once the round's training and site evaluation are done, so it writes the
round's complete line and checkpoint.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common import rundir
from common.privacy import BUDGET_EXHAUSTED_REASON
from common.datasets import Split, TaskInfo
from common.training import evaluate

PRIVACY_LEDGER = "privacy_ledger.json"
PRIVACY_KEYS = ("epsilon", "epsilon_budget", "delta", "noise_multiplier", "sample_rate",
                "dp_steps")


class PrivacyBudgetSpent(Exception):
    """Every site has refused to train because its privacy budget is spent: end the run cleanly."""


def _site_metrics(replies: list[Message]) -> tuple[dict[int, dict], dict[int, str]]:
    ok: dict[int, dict] = {}
    failed: dict[int, str] = {}
    for msg in replies:
        node = msg.metadata.src_node_id
        if msg.has_error():
            failed[node] = msg.error.reason
            continue
        record = next(iter(msg.content.metric_records.values()))
        metrics = {k: v for k, v in record.items()}
        ok[int(metrics.get("site", node))] = metrics
    return ok, failed


@dataclass
class RoundLog:
    """Collects one round at a time and writes it to the run directory."""

    run_dir: Path
    num_rounds: int
    task: TaskInfo
    make_model: Callable[[], torch.nn.Module]
    global_test: Split | None
    meta: dict[str, Any] = field(default_factory=dict)
    echo: Callable[[str], None] = lambda line: print(line, file=sys.stdout, flush=True)
    train: dict[int, dict] = field(default_factory=dict)
    test: dict[int, dict] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    exhausted: dict[int, dict] = field(default_factory=dict)     # node id -> round, reason
    privacy: dict[str, list[dict]] = field(default_factory=dict)  # site -> per-round ledger rows
    stopped: str = ""                                             # why the run ended early
    central: Any = None          # client-level DP wrapper (has privacy_spent()), if any
    central_plan: dict = field(default_factory=dict)
    _t0: float = field(default_factory=time.perf_counter)

    def record_train(self, server_round: int, replies: list[Message]) -> None:
        self.train, failed = _site_metrics(replies)
        self.failures = {f"node {n} (train)": reason for n, reason in failed.items()}
        for node, reason in failed.items():
            if reason.startswith(BUDGET_EXHAUSTED_REASON):
                self.exhausted.setdefault(node, {"round": server_round, "reason": reason})
        for site, metrics in self.train.items():
            if "epsilon" in metrics:
                row = {"round": server_round, **{k: metrics[k] for k in PRIVACY_KEYS}}
                self.privacy.setdefault(str(site), []).append(row)
        refused = all(r.startswith(BUDGET_EXHAUSTED_REASON) for r in failed.values())
        if failed and not self.train and not refused:
            detail = "; ".join(f"{k}: {v}" for k, v in self.failures.items())
            raise RuntimeError(f"round {server_round}: every site failed to train: {detail}")

    def record_evaluate(self, server_round: int, replies: list[Message]) -> None:
        self.test, failed = _site_metrics(replies)
        self.failures.update({f"node {n} (evaluate)": r for n, r in failed.items()})

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Strategy evaluate_fn: global test metrics, then the round's line and checkpoint."""
        model = self.make_model()
        state = arrays.to_torch_state_dict()
        model.load_state_dict(state)
        glob = evaluate(model, self.global_test, self.task) if self.global_test is not None else {}
        line = {
            "round": server_round,
            "seconds": round(time.perf_counter() - self._t0, 3),
            "global": glob,
            "sites": {str(s): {"train": self.train.get(s, {}), "test": self.test.get(s, {})}
                      for s in sorted(set(self.train) | set(self.test))},
            "failures": self.failures,
        }
        spent = self.central.privacy_spent() if self.central is not None else None
        if spent is not None:
            line["central_dp"] = {"epsilon": spent.epsilon, "delta": spent.delta,
                                  "releases": spent.num_releases}
        rundir.append_jsonl(self.run_dir / rundir.METRICS, line)
        if self.privacy or self.exhausted:
            self.write_privacy_ledger()
        rundir.save_model(self.run_dir / rundir.CHECKPOINT, state,
                          {"round": server_round, **self.meta})
        self.history.append(line)
        self.echo(progress_line(line, self.num_rounds))
        self.train, self.test, self.failures = {}, {}, {}
        return MetricRecord({k: float(v) for k, v in glob.items()}) if glob else None


    def write_privacy_ledger(self) -> None:
        """Run-level ledger: every site's cumulative epsilon after each round, and refusals."""
        rundir.write_json(self.run_dir / PRIVACY_LEDGER, {
            "sites": self.privacy,
            "exhausted": {str(node): info for node, info in self.exhausted.items()},
        })


def progress_line(line: dict, num_rounds: int) -> str:
    """One human line per round."""
    parts = [f"[round {line['round']}/{num_rounds}]"]
    glob = line["global"]
    if glob:
        parts.append(f"global acc {glob['accuracy']:.3f} auc {_fmt(glob.get('auc'))}")
    tests = [s["test"] for s in line["sites"].values() if s["test"]]
    if tests:
        accs = [t["accuracy"] for t in tests]
        parts.append(f"sites acc mean {sum(accs) / len(accs):.3f} min {min(accs):.3f}")
    losses = [s["train"]["train_loss"] for s in line["sites"].values() if s["train"]]
    if losses:
        parts.append(f"train loss {sum(losses) / len(losses):.3f}")
    if line["failures"]:
        parts.append(f"{len(line['failures'])} site failure(s)")
    parts.append(f"{line['seconds']:.1f}s")
    return parts[0] + " " + " | ".join(parts[1:])


def _fmt(value: Any) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


class RecordingStrategy(Strategy):
    """Delegates every hook to `inner`, showing the replies to a RoundLog first."""

    def __init__(self, inner: Strategy, log: RoundLog) -> None:
        self.inner = inner
        self.log = log

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """The inner strategy's messages, minus sites that have spent their privacy budget."""
        exhausted = self.log.exhausted
        if exhausted and set(grid.get_node_ids()) <= set(exhausted):
            raise PrivacyBudgetSpent(f"every site has spent its privacy budget; the run stops "
                                     f"after round {server_round - 1}")
        messages = self.inner.configure_train(server_round, arrays, config, grid)
        return [m for m in messages if m.metadata.dst_node_id not in exhausted]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.log.record_train(server_round, replies)
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        replies = list(replies)
        self.log.record_evaluate(server_round, replies)
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()
