"""`RecordingStrategy`: wraps any Flower strategy (as Flower's DP wrappers do) and shows each
round's replies to a `RoundLog` before delegating aggregation. Flower's `Strategy.start` drives
the rounds; the hooks add what fedclinic records and enforces around them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from server.messaging import PollingGrid
from server.round_log import RoundLog

MAX_ROUNDS_WITHOUT_QUORUM = 3

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


def in_site_order(replies: Iterable[Message]) -> list[Message]:
    """The replies sorted by the site each one names (errors last, by node): aggregation sums
    in this order, not in the order replies arrived, so that the same seed gives bitwise the
    same global model (floating-point sums depend on their order)."""
    def key(msg: Message) -> tuple[int, float, int]:
        if msg.has_error() or not msg.content.metric_records:
            return 1, 0.0, msg.metadata.src_node_id
        metrics = next(iter(msg.content.metric_records.values()))
        return 0, float(metrics.get("site", -1.0)), msg.metadata.src_node_id
    return sorted(replies, key=key)


class PrivacyBudgetSpent(Exception):
    """Every site has refused to train, because its privacy budget is spent or the run is
    outside its own privacy policy: end the run cleanly (the message names the rules)."""


class QuorumLost(Exception):
    """Too many rounds in a row missed the quorum: stop cleanly (resume once sites are back)."""


class RecordingStrategy(Strategy):
    """Delegates every hook to `inner`, showing the replies to a RoundLog first.

    Through Flower's hooks it adds: sites that spent their privacy budget, or refused the run
    by their own policy, are not asked again (configure_train; refusing sites neither to
    evaluate), and once none is left the run ends after that round's line; the sites asked
    but silent until the timeout are named, each phase is timed, and a round short of the
    quorum is not aggregated (aggregate_*); three such rounds in a row stop the run (after the
    round's evaluate_fn, so its line and checkpoint are written first).
    """

    def __init__(self, inner: Strategy, log: RoundLog) -> None:
        self.inner = inner
        self.log = log
        self._asked = 0               # messages sent this round (the quorum's denominator)
        self._offset = 0              # rounds a resumed run had done before this start
        self._timeout = 3600.0
        self._grid: PollingGrid | None = None
        self._missed = 0              # rounds in a row that missed the quorum
        self._clock = 0.0             # when this phase's configure_* began

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: EvaluateFn | None = None, first_round: int = 1) -> Result:
        """Flower's `Strategy.start` runs the rounds; this override adds only what its
        signature does not allow:

        * `first_round` (a resumed run continues its numbering): Flower's loop always runs
          rounds 1..num_rounds and calls evaluate_fn(0, ...) first. So it is given the number
          of rounds left, every hook and evaluate_fn shift Flower's round number by the rounds
          already done, evaluate_fn(0) is skipped when resuming, and the Result's keys are
          shifted back. Flower's own log lines ("[ROUND 1/2]") count the rounds of this start.
        * replies polled every 0.2 s and who was asked: Flower's loop calls
          `grid.send_and_receive`, which polls every 3 s and does not say which node each
          message went to (needed to name a site that never answered, and the node of an error
          the SuperLink wrote for a node that went away). So Flower is given a `PollingGrid`.
        * the initial model as the result when no round was aggregated (Flower's Result then
          holds no arrays).
        """
        self._offset, self._timeout, self._missed = max(0, first_round - 1), timeout, 0
        self._grid = PollingGrid(grid)
        result = super().start(self._grid, initial_arrays, num_rounds - self._offset, timeout,
                               train_config, evaluate_config, self._end_of_round(evaluate_fn))
        return self._renumbered(result, initial_arrays)

    def _end_of_round(self, evaluate_fn: EvaluateFn | None) -> EvaluateFn:
        """evaluate_fn in run rounds, then the quorum check (the round's line is written)."""
        def end_of_round(current_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if current_round == 0 and self._offset:
                return None                  # the first start evaluated the initial model
            glob = evaluate_fn(current_round + self._offset, arrays) if evaluate_fn else None
            self._stop_if_nobody_left(current_round + self._offset)
            if self._missed >= MAX_ROUNDS_WITHOUT_QUORUM:
                raise QuorumLost(f"{self._missed} rounds in a row missed the quorum (last: "
                                 f"round {current_round + self._offset}); the run stops with "
                                 f"the last aggregated model. Resume it once enough sites are "
                                 f"back")
            return glob
        return end_of_round

    def _stop_if_nobody_left(self, last_round: int) -> None:
        """Every connected site has refused (budget or policy): end the run now, naming why."""
        out = self.log.out_of_run()
        nodes = set(self._grid.get_node_ids()) if self._grid is not None else set()
        if out and nodes and nodes <= out:
            raise PrivacyBudgetSpent(self.log.stop_reason(last_round))

    def _renumbered(self, result: Result, initial_arrays: ArrayRecord) -> Result:
        if len(result.arrays) == 0:
            result.arrays = initial_arrays
        if self._offset:
            for name in ("train_metrics_clientapp", "evaluate_metrics_clientapp",
                         "evaluate_metrics_serverapp"):
                shifted = {r + self._offset: m for r, m in getattr(result, name).items()}
                setattr(result, name, shifted)
        return result

    def _phase_replies(self, stage: str, replies: Iterable[Message]) -> list[Message]:
        """The phase's replies, after timing the phase and naming who did not answer."""
        replies = list(replies)
        self.log.timing[f"{stage}_wall"] = time.perf_counter() - self._clock
        self.log.sent = self._grid.sent if self._grid is not None else {}
        self.log.record_missing(stage, self.log.sent, replies, self._timeout)
        return replies

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """The inner strategy's messages, minus sites that have spent their privacy budget or
        refused the run by their policy."""
        self._clock = time.perf_counter()
        self.log.timing = {}
        server_round += self._offset
        out = self.log.out_of_run()
        if out and set(grid.get_node_ids()) <= out:
            raise PrivacyBudgetSpent(self.log.stop_reason(server_round - 1))
        messages = self.inner.configure_train(server_round, arrays, config, grid)
        messages = [m for m in messages if m.metadata.dst_node_id not in out]
        self._asked = len(messages)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = in_site_order(self._phase_replies("train", replies))
        clock = time.perf_counter()
        aggregated = self._aggregate_train(server_round + self._offset, replies)
        self.log.timing["aggregate"] = time.perf_counter() - clock
        self._missed = self._missed + 1 if self.log.skipped else 0
        return aggregated

    def _aggregate_train(self, server_round: int, replies: list[Message]
                         ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record the replies; aggregate only if the quorum trained."""
        self.log.record_train(server_round, replies)
        self.log.skipped = self.log.quorum_missed(self._asked or len(replies))
        if self.log.skipped:
            self.log.echo(f"[round {server_round}] {self.log.skipped}")
            return None, None
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """The inner strategy's messages, minus sites that refused the run by their policy."""
        self._clock = time.perf_counter()
        messages = self.inner.configure_evaluate(server_round + self._offset, arrays, config,
                                                 grid)
        return [m for m in messages if m.metadata.dst_node_id not in self.log.refused]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        replies = in_site_order(self._phase_replies("evaluate", replies))
        self.log.record_evaluate(server_round + self._offset, replies)
        return self.inner.aggregate_evaluate(server_round + self._offset, replies)

    def summary(self) -> None:
        self.inner.summary()
