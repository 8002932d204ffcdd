"""One round at a time: per-site replies, failures, global evaluation, metrics.jsonl, checkpoints
and the run's privacy ledger.

`RoundLog.evaluate` is the strategy's `evaluate_fn`: Flower calls it once the round's training
and site evaluation are done, so it writes the round's complete line and checkpoint.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from common import rundir
from common.datasets import Split, TaskInfo
from common.packing import PACKED_KEY, unpack_state
from common.privacy.central import ClientDPPlan
from common.tracking.base import Tracker
from common.tracking.values import round_values
from common.training.prediction import evaluate
from common.wire import ReplyCode, refused_rule
from server import run_events
from server.model_selection import BEST_MODEL, EarlyStopped, ModelSelection
from server.progress import progress_line

PRIVACY_LEDGER = "privacy_ledger.json"
PRIVACY_KEYS = ("epsilon", "target_epsilon", "delta", "noise_multiplier", "sample_rate",
                "dp_steps")
# ... and what a site that enforces its own policy adds (kept when present)
POLICY_KEYS = ("lifetime_epsilon_spent", "lifetime_epsilon_budget", "policy_id", "count_noised",
               "secure_randomness")


def node_of(msg: Message, sent: dict[str, int]) -> int:
    """The node a reply answers for. An error the SuperLink writes for a node that went away
    (e.g. 'Node Unavailable') does not carry that node's id as its source; the message it
    replies to does."""
    return sent.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)


def is_budget_refusal(msg: Message) -> bool:
    """A site's refusal to train because the round would spend past its privacy budget: read
    from the reply's error code (the reason is text for people)."""
    return msg.has_error() and msg.error.code == ReplyCode.BUDGET_EXHAUSTED


def is_policy_refusal(msg: Message) -> bool:
    """A site's refusal because the request is outside its own privacy policy (code 4033)."""
    return msg.has_error() and msg.error.code == ReplyCode.POLICY_REFUSED


def site_metrics(replies: list[Message], names: dict[int, int] | None = None,
                 sent: dict[str, int] | None = None) -> tuple[dict[int, dict], dict[int, str]]:
    """Metrics per site of the successful replies, and the error reason per node of the others.
    `names` learns node id -> site id from successful replies (to name a site that fails later)."""
    ok: dict[int, dict] = {}
    failed: dict[int, str] = {}
    for msg in replies:
        node = node_of(msg, sent or {})
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
    refused: dict[int, dict] = field(default_factory=dict)   # node id -> round, reason, rule
    privacy: dict[str, list[dict]] = field(default_factory=dict)  # site -> per-round ledger rows
    stopped: str = ""                                             # why the run ended early
    central: Any = None          # client-level DP wrapper (has privacy_spent()), if any
    central_plan: ClientDPPlan | None = None                    # its plan, if any
    sites_of_nodes: dict[int, int] = field(default_factory=dict)  # node id -> site id
    quorum: Callable[[int], int] = lambda asked: 1       # successful replies a round needs
    skipped: str = ""               # why this round was not aggregated (quorum missed)
    timing: dict[str, float] = field(default_factory=dict)  # this round's phases, seconds
    sent: dict[str, int] = field(default_factory=dict)      # message id -> node, this phase
    checkpoint_state: Callable[[], dict] = dict   # strategy + RNG state saved with each round
    selection: ModelSelection | None = None      # the best model by validation statistics
    registered: dict[int, str] | None = None     # node id -> registered site name (deployed)
    tracker: Tracker = field(default_factory=Tracker)   # --track: MLflow / TensorBoard
    # packed global weights -> the model's full state dict (local-norm: the federated part
    # only travels, `common.training.local_norm`)
    unpack: Callable[[Any, torch.nn.Module], dict] = (
        lambda flat, model: unpack_state(flat, model.state_dict()))
    _t0: float = field(default_factory=time.perf_counter)

    def node_name(self, node: int) -> str:
        """A site as people know it: its registered name in a deployment ("site-2", from
        `fedclinic server`: server/run_events.py), else its number, else the node id."""
        names = self.registered or {}
        if node not in names and run_events.SITE_NAMES_ENV in os.environ:
            names = self.registered = run_events.site_names()     # a site registered since
        if node in names:
            return names[node]
        site = self.sites_of_nodes.get(node)
        return f"node {node}" if site is None else f"site {site} (node {node})"

    def record_missing(self, stage: str, sent: dict[str, int], replies: list[Message],
                       timeout: float) -> None:
        """Name each site that was asked but sent nothing back before the round timed out."""
        answered = {node_of(m, sent) for m in replies}
        for node in sent.values():
            if node not in answered:
                self.failures[f"{self.node_name(node)} ({stage})"] = (
                    f"no reply within the round timeout of {timeout:g} s (site down, "
                    f"disconnected or too slow); excluded from this round")

    def record_train(self, server_round: int, replies: list[Message]) -> None:
        """The round's replies: metrics and privacy rows of the sites that trained, failures
        named; a site that refused (its budget is spent, or the run is outside its policy) is
        not asked again in this run. Every site failing otherwise stops the run."""
        self.train, failed = site_metrics(replies, self.sites_of_nodes, self.sent)
        self.failures.update({f"{self.node_name(n)} (train)": reason
                              for n, reason in failed.items()})
        if run_events.deployed():
            self._not_asked()
        budget = {node_of(m, self.sent) for m in replies if is_budget_refusal(m)}
        for node in budget:
            if node not in self.exhausted:
                self._say_refused(node, f"privacy budget spent ({failed[node]})")
            self.exhausted.setdefault(node, {"round": server_round, "reason": failed[node]})
        policy = {node_of(m, self.sent) for m in replies if is_policy_refusal(m)}
        for node in policy:
            if node not in self.refused:
                self._say_refused(node, failed[node])
            self.refused.setdefault(node, {"round": server_round, "reason": failed[node],
                                           "rule": refused_rule(failed[node])})
        for site, metrics in self.train.items():
            if "epsilon" in metrics:
                row = {"round": server_round, **{k: metrics[k] for k in PRIVACY_KEYS},
                       **{k: metrics[k] for k in POLICY_KEYS if k in metrics}}
                self.privacy.setdefault(str(site), []).append(row)
        refused = set(failed) <= budget | policy
        if failed and not self.train and not refused and len(replies) == len(failed):
            detail = "; ".join(f"{k}: {v}" for k, v in self.failures.items())
            raise RuntimeError(f"round {server_round}: every site failed to train: {detail}")

    def _not_asked(self) -> None:
        """Registered sites this round did not ask (offline when it began, or revoked): named as
        excluded too, so the report lists every site that missed the round."""
        asked = set(self.sent.values())
        for node, (name, status) in run_events.site_registry().items():
            if node in asked or node in self.out_of_run():
                continue
            self.failures.setdefault(f"{name} (train)", (
                "revoked: its key is no longer registered" if status == "unregistered" else
                "not connected when the round began, so not asked"))

    def _say_refused(self, node: int, reason: str) -> None:
        """A site refused this run (policy or budget): one line, and one server event."""
        self.echo(f"fedclinic: {self.node_name(node)} refused: {reason}; not asked again in "
                  f"this run")
        run_events.emit("refused", site=self.node_name(node), reason=reason)

    def out_of_run(self) -> set[int]:
        """Nodes not asked again in this run: budget spent, or refused by their policy."""
        return set(self.exhausted) | set(self.refused)

    def stop_reason(self, last_round: int) -> str:
        """Why the run ends when no site is left to train (each refusal's rule named)."""
        if not self.refused:
            return (f"every site has spent its privacy budget; the run stops after round "
                    f"{last_round}")
        said = [f"{self.node_name(node)}: {info['reason']}"
                for node, info in sorted(self.refused.items())]
        said += [f"{self.node_name(node)}: privacy budget spent"
                 for node in sorted(self.exhausted)]
        rules = sorted({info["rule"] for info in self.refused.values()})
        return (f"no site is left to train: refused by the sites' privacy policy "
                f"({', '.join(rules)}); {'; '.join(said)}. The run stops after round "
                f"{last_round}")

    def quorum_missed(self, asked: int) -> str:
        """'' if enough sites trained this round, else the reason the round is skipped."""
        need = self.quorum(asked)
        if len(self.train) >= need:
            return ""
        return (f"quorum not met: {len(self.train)} of {asked} sites trained successfully, "
                f"{need} needed; the global model is unchanged this round")

    def record_evaluate(self, server_round: int, replies: list[Message]) -> None:
        self.test, failed = site_metrics(replies, self.sites_of_nodes, self.sent)
        self.failures.update({f"{self.node_name(n)} (evaluate)": r for n, r in failed.items()})

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Strategy evaluate_fn: global test metrics, then the round's line and checkpoint."""
        model = self.make_model()
        state = self.unpack(arrays[PACKED_KEY].numpy(), model)
        model.load_state_dict(state)
        glob = evaluate(model, self.global_test, self.task) if self.global_test is not None else {}
        line = self.round_line(server_round, glob)
        self._select(server_round, line, state)
        rundir.append_jsonl(self.run_dir / rundir.METRICS, line)
        if run_events.deployed():
            run_events.part_progress(self.run_dir, server_round)
        self.tracker.log_metrics(round_values(line), step=server_round)
        if self.privacy or self.exhausted or self.refused:
            self.write_privacy_ledger()
        rundir.save_model(self.run_dir / rundir.CHECKPOINT, state,
                          {"round": server_round, **self.meta, **self.checkpoint_state(),
                           "privacy": {"sites": self.privacy, "exhausted": self.exhausted,
                                       "refused": self.refused}})
        self.history.append(line)
        self.echo(progress_line(line, self.num_rounds)
                  + (self.selection.progress() if self.selection is not None else ""))
        self.train, self.test, self.failures, self.skipped = {}, {}, {}, ""
        self.timing = {}
        selection = self.selection
        if selection is not None and server_round < self.num_rounds and selection.should_stop():
            raise EarlyStopped(selection.stop_reason(server_round))
        return MetricRecord({k: float(v) for k, v in glob.items()}) if glob else None

    def _select(self, server_round: int, line: dict, state: dict) -> None:
        """Show the round's sites to the model selection; keep the model as best_model.pt
        when it is the best so far, and note the round's validation score in its line."""
        selection = self.selection
        if selection is None or server_round < 1:
            return
        best = selection.observe(server_round, line["sites"])
        if server_round in selection.scores:
            line["validation"] = {"criterion": selection.criterion,
                                  "value": selection.scores[server_round],
                                  "best_round": selection.best_round}
        if best:
            rundir.save_model(self.run_dir / BEST_MODEL, state,
                              {"round": server_round, **self.meta,
                               "selection": line["validation"]})

    def round_line(self, server_round: int, glob: dict) -> dict:
        """The round's line of metrics.jsonl."""
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
        return line

    def write_privacy_ledger(self) -> None:
        """Run-level ledger: every site's cumulative epsilon after each round, and refusals
        (budget spent: ``exhausted``; outside a site's policy: ``refused``, with the rule)."""
        ledger = {
            "sites": self.privacy,
            "exhausted": {str(node): info for node, info in self.exhausted.items()},
        }
        if self.refused:
            ledger["refused"] = {str(node): info for node, info in self.refused.items()}
        rundir.write_json(self.run_dir / PRIVACY_LEDGER, ledger)
