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
from flwr.serverapp.strategy import Result, Strategy

from common import rundir
from common.packing import PACKED_KEY, unpack_state
from common.privacy import BUDGET_EXHAUSTED_REASON
from common.datasets import Split, TaskInfo
from common.training import evaluate

PRIVACY_LEDGER = "privacy_ledger.json"
PRIVACY_KEYS = ("epsilon", "epsilon_budget", "delta", "noise_multiplier", "sample_rate",
                "dp_steps")


class PrivacyBudgetSpent(Exception):
    """Every site has refused to train because its privacy budget is spent: end the run cleanly."""


class QuorumLost(Exception):
    """Too many rounds in a row missed the quorum: stop cleanly (resume once sites are back)."""


MAX_ROUNDS_WITHOUT_QUORUM = 3


def _node_of(msg: Message, sent: dict[str, int]) -> int:
    """The node a reply answers for. An error the SuperLink writes for a node that went away
    (e.g. 'Node Unavailable') does not carry that node's id as its source; the message it
    replies to does."""
    return sent.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)


def _site_metrics(replies: list[Message], names: dict[int, int] | None = None,
                  sent: dict[str, int] | None = None) -> tuple[dict[int, dict], dict[int, str]]:
    """Metrics per site of the successful replies, and the error reason per node of the others.
    `names` learns node id -> site id from successful replies (to name a site that fails later)."""
    ok: dict[int, dict] = {}
    failed: dict[int, str] = {}
    for msg in replies:
        node = _node_of(msg, sent or {})
        if msg.has_error():
            failed[node] = msg.error.reason
            continue
        record = next(iter(msg.content.metric_records.values()))
        metrics = {k: v for k, v in record.items()}
        site = int(metrics.get("site", node))
        ok[site] = metrics
        if names is not None:
            names[node] = site
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
    sites_of_nodes: dict[int, int] = field(default_factory=dict)  # node id -> site id
    quorum: Callable[[int], int] = lambda asked: 1       # successful replies a round needs
    skipped: str = ""               # why this round was not aggregated (quorum missed)
    timing: dict[str, float] = field(default_factory=dict)  # this round's phases, seconds
    sent: dict[str, int] = field(default_factory=dict)      # message id -> node, this phase
    checkpoint_state: Callable[[], dict] = dict   # strategy + RNG state saved with each round
    _t0: float = field(default_factory=time.perf_counter)

    def node_name(self, node: int) -> str:
        site = self.sites_of_nodes.get(node)
        return f"node {node}" if site is None else f"site {site} (node {node})"

    def record_missing(self, stage: str, sent: dict[str, int], replies: list[Message],
                       timeout: float) -> None:
        """Name each site that was asked but sent nothing back before the round timed out."""
        answered = {_node_of(m, sent) for m in replies}
        for node in sent.values():
            if node not in answered:
                self.failures[f"{self.node_name(node)} ({stage})"] = (
                    f"no reply within the round timeout of {timeout:g} s (site down, "
                    f"disconnected or too slow); excluded from this round")

    def record_train(self, server_round: int, replies: list[Message]) -> None:
        self.train, failed = _site_metrics(replies, self.sites_of_nodes, self.sent)
        self.failures.update({f"{self.node_name(n)} (train)": reason
                              for n, reason in failed.items()})
        for node, reason in failed.items():
            if reason.startswith(BUDGET_EXHAUSTED_REASON):
                self.exhausted.setdefault(node, {"round": server_round, "reason": reason})
        for site, metrics in self.train.items():
            if "epsilon" in metrics:
                row = {"round": server_round, **{k: metrics[k] for k in PRIVACY_KEYS}}
                self.privacy.setdefault(str(site), []).append(row)
        refused = all(r.startswith(BUDGET_EXHAUSTED_REASON) for r in failed.values())
        if failed and not self.train and not refused and len(replies) == len(failed):
            detail = "; ".join(f"{k}: {v}" for k, v in self.failures.items())
            raise RuntimeError(f"round {server_round}: every site failed to train: {detail}")

    def quorum_missed(self, asked: int) -> str:
        """'' if enough sites trained this round, else the reason the round is skipped."""
        need = self.quorum(asked)
        if len(self.train) >= need:
            return ""
        return (f"quorum not met: {len(self.train)} of {asked} sites trained successfully, "
                f"{need} needed; the global model is unchanged this round")

    def record_evaluate(self, server_round: int, replies: list[Message]) -> None:
        self.test, failed = _site_metrics(replies, self.sites_of_nodes, self.sent)
        self.failures.update({f"{self.node_name(n)} (evaluate)": r for n, r in failed.items()})

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Strategy evaluate_fn: global test metrics, then the round's line and checkpoint."""
        model = self.make_model()
        state = unpack_state(arrays[PACKED_KEY].numpy(), model.state_dict())
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
        if self.skipped:
            line["skipped"] = self.skipped
        if self.timing:
            line["timing"] = {k: round(v, 4) for k, v in self.timing.items()}
        spent = self.central.privacy_spent() if self.central is not None else None
        if spent is not None:
            line["central_dp"] = {"epsilon": spent.epsilon, "delta": spent.delta,
                                  "releases": spent.num_releases}
        rundir.append_jsonl(self.run_dir / rundir.METRICS, line)
        if self.privacy or self.exhausted:
            self.write_privacy_ledger()
        rundir.save_model(self.run_dir / rundir.CHECKPOINT, state,
                          {"round": server_round, **self.meta, **self.checkpoint_state(),
                           "privacy": {"sites": self.privacy, "exhausted": self.exhausted}})
        self.history.append(line)
        self.echo(progress_line(line, self.num_rounds))
        self.train, self.test, self.failures, self.skipped = {}, {}, {}, ""
        self.timing = {}
        return MetricRecord({k: float(v) for k, v in glob.items()}) if glob else None


    def write_privacy_ledger(self) -> None:
        """Run-level ledger: every site's cumulative epsilon after each round, and refusals."""
        rundir.write_json(self.run_dir / PRIVACY_LEDGER, {
            "sites": self.privacy,
            "exhausted": {str(node): info for node, info in self.exhausted.items()},
        })


def progress_line(line: dict, num_rounds: int) -> str:
    """One human line per round: accuracy and AUC, or Dice and HD95 for segmentation."""
    parts = [f"[round {line['round']}/{num_rounds}]"]
    glob = line["global"]
    tests = [s["test"] for s in line["sites"].values() if s["test"]]
    seg = "dice" in glob or any("dice" in t for t in tests)
    key, short = ("dice", "dice") if seg else ("accuracy", "acc")
    if glob and seg:
        parts.append(f"global dice {glob['dice']:.3f} hd95 {_fmt(glob.get('hd95'))}")
    elif glob:
        parts.append(f"global acc {glob['accuracy']:.3f} auc {_fmt(glob.get('auc'))}")
    if tests:
        accs = [t[key] for t in tests]
        parts.append(f"sites {short} mean {sum(accs) / len(accs):.3f} min {min(accs):.3f}")
    losses = [s["train"]["train_loss"] for s in line["sites"].values() if s["train"]]
    if losses:
        parts.append(f"train loss {sum(losses) / len(losses):.3f}")
    if line["failures"]:
        parts.append("excluded: " + ", ".join(excluded_sites(line["failures"])))
    if line.get("skipped"):
        parts.append("not aggregated (quorum)")
    parts.append(f"{line['seconds']:.1f}s")
    return parts[0] + " " + " | ".join(parts[1:])


def excluded_sites(failures: dict[str, str]) -> list[str]:
    """'site 2' / 'node 7' once each, from failure keys like 'site 2 (node 7) (train)'."""
    names = []
    for key in failures:
        name = key.split(" (")[0]
        if name not in names:
            names.append(name)
    return names


def _fmt(value: Any) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


REPLY_POLL_SECONDS = 0.2


def send_and_receive(grid: Grid, messages: list[Message], timeout: float,
                     poll: float = REPLY_POLL_SECONDS) -> tuple[list[Message], dict[str, int]]:
    """Push `messages` and collect replies until all arrived or `timeout` passed. Like Flower's
    `Grid.send_and_receive`, but polls every `poll` s instead of every 3 s: on a deployment the
    3 s poll alone added ~1.5 s per phase, 3 s per round, to every round's latency.
    Returns the replies and which node each pushed message id went to."""
    destinations = [m.metadata.dst_node_id for m in messages]
    sent = dict(zip(grid.push_messages(messages), destinations))
    waiting = set(sent)
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while waiting:
        got = list(grid.pull_messages(waiting))
        replies.extend(got)
        waiting -= {m.metadata.reply_to_message_id for m in got}
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    return replies, sent


class RecordingStrategy(Strategy):
    """Delegates every hook to `inner`, showing the replies to a RoundLog first."""

    def __init__(self, inner: Strategy, log: RoundLog) -> None:
        self.inner = inner
        self.log = log
        self._asked = 0

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
              first_round: int = 1) -> Result:
        """Flower's round loop (train, site evaluation, global evaluation), plus: it can start
        at `first_round` (a resumed run continues its numbering), and it names every site that
        was asked but did not answer within `timeout`."""
        train_config = train_config if train_config is not None else ConfigRecord()
        evaluate_config = evaluate_config if evaluate_config is not None else ConfigRecord()
        result = Result(arrays=initial_arrays)
        arrays = initial_arrays
        if evaluate_fn is not None and first_round == 1:
            evaluate_fn(0, arrays)
        missed = 0
        for server_round in range(first_round, num_rounds + 1):
            clock = time.perf_counter()
            messages = list(self.configure_train(server_round, arrays, train_config, grid))
            self._asked = len(messages)
            replies, self.log.sent = send_and_receive(grid, messages, timeout)
            self.log.timing = {"train_wall": time.perf_counter() - clock}
            self.log.record_missing("train", self.log.sent, replies, timeout)
            clock = time.perf_counter()
            new_arrays, metrics = self.aggregate_train(server_round, replies)
            self.log.timing["aggregate"] = time.perf_counter() - clock
            if new_arrays is not None:
                arrays = result.arrays = new_arrays
            if metrics is not None:
                result.train_metrics_clientapp[server_round] = metrics
            missed = missed + 1 if self.log.skipped else 0
            clock = time.perf_counter()
            messages = list(self.configure_evaluate(server_round, arrays, evaluate_config, grid))
            replies, self.log.sent = send_and_receive(grid, messages, timeout)
            self.log.timing["evaluate_wall"] = time.perf_counter() - clock
            self.log.record_missing("evaluate", self.log.sent, replies, timeout)
            site_metrics = self.aggregate_evaluate(server_round, replies)
            if site_metrics is not None:
                result.evaluate_metrics_clientapp[server_round] = site_metrics
            if evaluate_fn is not None:
                glob = evaluate_fn(server_round, arrays)
                if glob is not None:
                    result.evaluate_metrics_serverapp[server_round] = glob
            if missed >= MAX_ROUNDS_WITHOUT_QUORUM:
                raise QuorumLost(f"{missed} rounds in a row missed the quorum (last: round "
                                 f"{server_round}); the run stops with the last aggregated model. "
                                 f"Resume it once enough sites are back")
        return result

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
        asked = self._asked or len(replies)
        self.log.skipped = self.log.quorum_missed(asked)
        if self.log.skipped:
            self.log.echo(f"[round {server_round}] {self.log.skipped}")
            return None, None
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
