"""What a site's replies carry: the metrics of a train or an evaluate reply, as its policy allows.

The table of every field and how it is protected is `common.releases` (docs/what-leaves.md);
this module makes the replies match it. Under sample-level DP:

* train: no training loss, no timings, no count of skipped files; the sample count leaves as the
  policy says (``sample_count``): "noised" - a Gaussian release charged to the site's ledger
  once per run (kind "count") and reused for the run's later rounds, or "equal" - the constant
  1.0 (FedAvg then weights the sites equally); for single-label classification the noised
  release is the per-class count vector (same sensitivity, same charge);
* evaluate: ``test_metrics`` "local" - only public fields (``withheld`` = 1.0); "noised" - the
  confusion matrix plus Gaussian noise (L2 sensitivity 1), charged (kind "metrics"), and what
  `common.privacy.mechanisms.derived_metrics` reads from it. A release is made only in the
  last ``max_metric_releases_per_run`` rounds of the run (so it describes the final model),
  only while the run has releases left, and only if the run's and the dataset's budgets allow
  it (`client.admission.check_spend`); otherwise the metrics are withheld.

The validation statistics (`common.validation_stats`: val loss and size, the val score
histograms or confusion matrix) follow the same rule as the test metrics: exact without DP when
the policy lets test metrics leave; under DP only the counts, noised in the same release as the
test confusion matrix (one patient is in one split and one cell: L2 sensitivity 1, one charge);
else they stay at the site, and the server then selects no model and sets the operating
point from the noised training class counts (`common.class_prior`).

The exact values stay at the site: in deployment they are appended to its local report,
``<state>/local-report.jsonl`` (0600), ``<state>`` being the parent of the node config's
``ledger-dir``. A simulated site keeps no report (the simulator scores the final model itself).

Noise comes from the OS CSPRNG (`common.training.secure_random.CsprngSource`, hardened against
the floating-point attack) when the policy asks for secure randomness in deployment, else from
a torch generator seeded from the task's seed (simulation: reproducible).
"""

from __future__ import annotations

import json
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from client.admission import check_spend
from client.ledger import ledger_dir
from client.policy import SitePolicy, is_simulated
from client.site import LocalSite
from common.class_prior import class_count_key, class_counts
from common.config import ConfigError, RunConfig
from common.privacy.ledger import BudgetExhausted, PrivacyLedger
from common.privacy.mechanisms import (
    Noise, confusion_counts, derived_metrics, gaussian_entry, matrix_sensitivity, release_count,
    release_matrix,
)
from common.private_files import PRIVATE_FILE, private_dir
from common.training.prediction import classification_logits, evaluate, predict_proba
from common.validation_stats import (
    COUNT_KINDS, VAL_EXAMPLES, VAL_LOSS, VAL_NOISE_SD, counts_metrics, validation_counts,
)
from common.training.secure_random import CsprngSource

LOCAL_REPORT = "local-report.jsonl"       # next to it: the exact values that did not leave
COUNT_KIND, METRICS_KIND = "count", "metrics"   # ledger entry kinds of the two releases


class ReleaseLedger(Protocol):
    """What releases read and write of the site's ledger (client.ledger.SiteLedger)."""

    def run(self, run_key: str) -> PrivacyLedger: ...
    def lifetime(self) -> PrivacyLedger: ...
    def released(self, run_key: str, kind: str) -> float | None: ...
    def released_values(self, run_key: str, kind: str) -> tuple[float, ...] | None: ...
    @property
    def entries(self) -> tuple[Any, ...]: ...      # client.ledger_chain.LedgerEntry: .run, .kind
    def append(self, *, run_key: str, server_round: int, kind: str, noise_multiplier: float,
               sample_rate: float, steps: int, delta: float,
               value: float | None = None,
               values: tuple[float, ...] | None = None) -> None: ...


@dataclass(frozen=True)
class Releases:
    """What one task may release, and where its charges and exact values go."""

    policy: SitePolicy
    dp: bool                              # sample-level DP-SGD (cfg.dp == "sample")
    run_key: str
    server_round: int
    ledger: ReleaseLedger | None = None   # needed for a charged release
    delta: float | None = None            # the site's delta for the run (charged releases)
    seed: int | None = None               # None: CSPRNG noise; an int: seeded (simulation)
    report: Path | None = None            # the site's local report (deployment), or None

    def noise(self, kind: str) -> Noise:
        """The noise source of one release (``kind`` salts the simulation seed)."""
        if self.seed is None:
            return CsprngSource()
        return torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{kind}".encode()))

    def charge(self, kind: str, noise_multiplier: float, value: float | None = None,
               values: tuple[float, ...] | None = None) -> None:
        """Append one Gaussian release ``(sigma, 1, 1)`` to the site's ledger (with the value
        or vector released, when it is reused later in the run)."""
        if self.ledger is None or self.delta is None:
            raise ConfigError(f"a {kind} release under DP needs the site's ledger and delta")
        sigma, q, steps = gaussian_entry(noise_multiplier)
        self.ledger.append(run_key=self.run_key, server_round=self.server_round, kind=kind,
                           noise_multiplier=sigma, sample_rate=q, steps=steps,
                           delta=self.delta, value=value, values=values)


def local_report_path(node_config: Mapping[str, Any]) -> Path | None:
    """``<state>/local-report.jsonl`` of a deployed site (``<state>`` = the parent of its
    ledger folder, `client.ledger.ledger_dir`); None for a simulated site or one without a
    ledger folder."""
    folder = ledger_dir(node_config)
    if is_simulated(node_config) or folder is None:
        return None
    return folder.parent / LOCAL_REPORT


def releases_for(node_config: Mapping[str, Any], policy: SitePolicy, *, dp: bool, run_key: str,
                 server_round: int, seed: int, ledger: ReleaseLedger | None = None,
                 delta: float | None = None) -> Releases:
    """The `Releases` of one task: CSPRNG noise in deployment when the policy asks for secure
    randomness (``seed`` then unused), else noise seeded from ``seed``."""
    secure = policy.secure_randomness and not is_simulated(node_config)
    return Releases(policy=policy, dp=dp, run_key=run_key, server_round=server_round,
                    ledger=ledger, delta=delta, seed=None if secure else seed,
                    report=local_report_path(node_config))


def keep_local(rel: Releases, task: str, exact: Mapping[str, float],
               sent: Mapping[str, float]) -> None:
    """Append the task's exact values (and what was sent instead) to the local report."""
    if rel.report is None:
        return
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "run": rel.run_key, "round": rel.server_round, "task": task,
                       "exact": dict(exact), "sent": dict(sent)}, allow_nan=True)
    private_dir(rel.report.parent)
    fd = os.open(rel.report, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- train replies

@dataclass(frozen=True)
class SampleCount:
    value: float          # the FedAvg weight that leaves ("num-examples")
    noised: bool          # a Gaussian release (charged) rather than exact or equal
    classes: tuple[float, ...] = ()   # the noised per-class counts (single-label tasks)


def train_class_counts(site: LocalSite) -> np.ndarray | None:
    """The site's training cases per class of a single-label classification task (None for
    multilabel, whose one case is in several counts, and for segmentation)."""
    if site.task.kind not in COUNT_KINDS:
        return None
    return class_counts(site.train.labels, site.task.num_classes)


def sample_count(rel: Releases, n_train: int, class_counts: np.ndarray | None = None
                 ) -> SampleCount:
    """The training-sample count as the policy lets it leave. "noised": released and charged
    the first time in the run (clamped to >= 1 and rounded, post-processing), then the cached
    value; "equal": 1.0; "exact" (never under DP): ``n_train``. Call it after the round's
    admission (`client.admission.admit` plans and checks the count's charge).

    With ``class_counts`` (single-label classification), the noised release is the vector of
    per-class counts plus N(0, sigma^2) per class instead of the total: adding or removing one
    patient changes one class count by 1, so the vector has the total's L2 sensitivity 1 and
    the same single (sigma, 1, 1) charge. The total is the sum of the noised counts; the
    vector is kept in the ledger entry and re-sent each round (post-processing of the one
    release): the site's prior of a logit-adjusted loss under DP, and the server's class prior
    (the operating point under DP when no validation statistics leave:
    `common.operating_point.prior_point`)."""
    how = rel.policy.sample_count_release(rel.dp)
    if how == "equal":
        return SampleCount(1.0, False)
    if how == "exact" and not rel.dp:
        return SampleCount(float(n_train), False)
    if rel.ledger is None:
        raise ConfigError("a noised sample count needs the site's ledger")
    cached = rel.ledger.released(rel.run_key, COUNT_KIND)
    if cached is not None:
        kept = rel.ledger.released_values(rel.run_key, COUNT_KIND)
        return SampleCount(float(cached), True, tuple(kept or ()))
    sigma = rel.policy.count_noise_multiplier
    if class_counts is None:
        noisy, _ = release_count(n_train, sigma, rel.noise(COUNT_KIND))
        classes: tuple[float, ...] = ()
    else:
        if int(np.sum(class_counts)) != n_train:
            raise ValueError(f"class counts {list(class_counts)} do not sum to n={n_train}")
        vector, _ = release_matrix(np.asarray(class_counts), sigma, rel.noise(COUNT_KIND))
        classes = tuple(max(0.0, float(round(v))) for v in vector)   # post-processing
        noisy = float(np.sum(vector))
    value = max(1.0, float(round(noisy)))
    rel.charge(COUNT_KIND, sigma, value, classes or None)
    return SampleCount(value, True, classes)


def train_metrics(rel: Releases, result: Any, site: LocalSite, count: SampleCount, *,
                  proximal_mu: float, client_seconds: float,
                  privacy: Mapping[str, float] | None = None) -> dict[str, float]:
    """The train reply's metrics. ``result``: a TrainResult or DPTrainResult (``loss``,
    ``steps``, ``seconds``); ``count``: `sample_count`'s; ``privacy``: the public DP fields
    (epsilon, delta, ...). Under DP no loss, timing or skipped-file count leaves; without DP
    the loss leaves if the policy's ``train_loss`` is "exact". The exact values go to the local
    report."""
    metrics: dict[str, float] = {
        **(privacy or {}),
        "num-examples": count.value,
        "dp-weight": 1.0,              # client-level DP averages with equal weights
        "steps": result.steps,         # public: local_epochs x ceil(n / batch_size)
        "proximal_mu": proximal_mu,
        "site": site.site,
        "policy_id": rel.policy.policy_id,
    }
    exact = {"num-examples": len(site.train), "train_loss": result.loss,
             "train_seconds": result.seconds, "client_seconds": client_seconds,
             "skipped_files": site.skipped}
    if rel.dp:
        metrics["count_noised"] = 1.0 if count.noised else 0.0
        metrics.update({class_count_key(c): v for c, v in enumerate(count.classes)})
    else:
        metrics.update({k: exact[k] for k in ("train_seconds", "client_seconds",
                                              "skipped_files")})
        if rel.policy.train_loss_release(False) == "exact":
            metrics["train_loss"] = result.loss
    keep_local(rel, "train", exact, metrics)
    return metrics


# --------------------------------------------------------------------------- evaluate replies

def evaluate_metrics(rel: Releases, model: nn.Module, site: LocalSite, cfg: RunConfig
                     ) -> dict[str, float]:
    """The evaluate reply's metrics for the model on the site's test split (module docstring),
    with the validation statistics of its val split (`common.validation_stats`) under the same
    rule: "exact" (no DP, the policy allows it) - every metric, the val loss and counts;
    "local" - public fields only; "noised" - derived metrics of a charged noisy confusion
    matrix and the noised val counts (one release), or public fields only when no release is
    due or allowed."""
    how = rel.policy.test_metrics_release(rel.dp)
    batch = max(cfg.batch_size, 128)
    if how == "exact":
        result = evaluate(model, site.test, site.task, batch_size=batch)
        metrics = {k: float(v) for k, v in result.items() if k != "num_examples"}
        return {**metrics, **exact_validation(model, site, batch),
                "num-examples": len(site.test), "dp-weight": 1.0, "site": site.site}
    withheld = {"site": site.site, "num-examples": 1.0, "dp-weight": 1.0, "withheld": 1.0}
    noised = _noised_metrics(rel, model, site, cfg, batch) if how == "noised" else None
    sent = withheld if noised is None else {**withheld, "withheld": 0.0, **noised}
    if rel.report is not None:
        exact = evaluate(model, site.test, site.task, batch_size=batch)
        keep_local(rel, "evaluate", {**{k: float(v) for k, v in exact.items()},
                                     **exact_validation(model, site, batch)}, sent)
    return sent


def exact_validation(model: nn.Module, site: LocalSite, batch: int) -> dict[str, float]:
    """``val_loss``, ``val_examples`` and the val counts of a classification task on the
    site's val split ({} without one, and for segmentation: no model selection there yet)."""
    val, task = site.val, site.task
    if val is None or len(val) == 0 or task.kind == "segmentation":
        return {}
    if task.kind not in COUNT_KINDS:                      # multilabel: the loss only
        return {VAL_LOSS: evaluate(model, val, task, batch_size=batch)["loss"],
                VAL_EXAMPLES: float(len(val))}
    logits = classification_logits(model, val.images, task, batch)
    labels = np.asarray(val.labels, dtype=np.int64)
    loss = F.cross_entropy(logits, torch.as_tensor(labels)).item()
    counts = validation_counts(task.kind, labels, torch.softmax(logits, dim=1).numpy())
    return {VAL_LOSS: float(loss), VAL_EXAMPLES: float(len(val)),
            **counts_metrics(task.kind, counts)}


def _validation_counts(model: nn.Module, site: LocalSite, batch: int) -> np.ndarray | None:
    """The val counts a noised release adds (single-label kinds with a val split), else None."""
    val = site.val
    if val is None or len(val) == 0 or site.task.kind not in COUNT_KINDS:
        return None
    probs = predict_proba(model, val.images, site.task, batch)
    return validation_counts(site.task.kind, np.asarray(val.labels), probs, noised=True)


def metric_release_due(rel: Releases, cfg: RunConfig) -> bool:
    """A noised metric release is due in the run's last ``max_metric_releases_per_run`` rounds
    while the run has made fewer than that many."""
    k = rel.policy.max_metric_releases_per_run
    if k < 1 or rel.server_round <= cfg.rounds - k or rel.ledger is None:
        return False
    made = sum(1 for e in rel.ledger.entries if e.run == rel.run_key and e.kind == METRICS_KIND)
    return made < k


def _noised_metrics(rel: Releases, model: nn.Module, site: LocalSite, cfg: RunConfig,
                    batch: int) -> dict[str, float] | None:
    """Charge and release a noisy confusion matrix; None when none is due, the task has no
    confusion matrix (segmentation) or the budgets do not allow it."""
    if site.task.kind == "segmentation" or not metric_release_due(rel, cfg):
        return None
    sigma = rel.policy.metric_noise_multiplier
    try:
        check_spend(rel.policy, rel.ledger, rel.run_key, [gaussian_entry(sigma)],
                    delta=rel.delta, accountant=cfg.accountant,
                    budget=min(cfg.target_epsilon, rel.policy.max_epsilon_per_run),
                    target=cfg.target_epsilon, what=f"the test metrics of round "
                                                    f"{rel.server_round}")
    except (BudgetExhausted, ConfigError):   # PolicyRefused is a ConfigError
        return None
    probs = predict_proba(model, site.test.images, site.task, batch)
    counts = confusion_counts(site.task.kind, np.asarray(site.test.labels), probs)
    val = _validation_counts(model, site, batch)
    rel.charge(METRICS_KIND, sigma)           # charged before anything is released
    if val is None:
        noisy, _ = release_matrix(counts, sigma, rel.noise(METRICS_KIND),
                                  sensitivity=matrix_sensitivity(site.task.kind, counts))
        return derived_metrics(site.task.kind, noisy)
    # One Gaussian release of the test confusion matrix and the val counts together: a patient
    # is in one split and in one cell of it, so the joint vector's L2 sensitivity is 1.
    joint = np.concatenate([counts.ravel(), val.ravel()])
    noisy, _ = release_matrix(joint, sigma, rel.noise(METRICS_KIND), sensitivity=1.0)
    test_part = noisy[:counts.size].reshape(counts.shape)
    val_part = noisy[counts.size:].reshape(val.shape)
    return {**derived_metrics(site.task.kind, test_part),
            **counts_metrics(site.task.kind, val_part), VAL_NOISE_SD: float(sigma)}
