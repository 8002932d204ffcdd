"""What leaves a site, as data: one `Release` per field of every message a site sends.

The table is the contract between the code and the docs: `client.audit.check_outgoing` refuses a
reply whose metric keys are not in `allowed_metric_keys` for its message type and DP mode, and
``docs/what-leaves.md`` is `render_markdown()` (a test keeps the two equal).

Threat model: the coordinator is honest-but-curious and may send any configuration; outsiders
see the network; only the site's own machine is trusted. The site decides what leaves it: a
value that depends on private data and leaves is either noised and charged to the site's
ledger, or declared public (and said so here, with what it reveals), or it does not leave.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

from common.operating_point import HIST_BINS, NOISED_HIST_BINS

# Message types: Flower's for the two replies; the others are what the site's SuperNode and
# executor send besides them.
TRAIN = "train"
EVALUATE = "evaluate"
ERROR = "error reply"
SUPERNODE = "SuperNode"
MESSAGE_TYPES = (TRAIN, EVALUATE, ERROR, SUPERNODE)

# When a row applies: under sample-level DP (dp='sample'), without it (dp='off' or 'client',
# which only a site policy with require_dp = false admits), or both.
ALWAYS, DP, NO_DP = "always", "dp", "no-dp"
WHEN = (ALWAYS, DP, NO_DP)

# How a value is protected.
DP_SGD = "DP-SGD noise"
CHARGED = "Gaussian noise, charged to the ledger"
PUBLIC = "public"
LOCAL = "stays local"
NONE = "none (exact)"
PROTECTIONS = (DP_SGD, CHARGED, PUBLIC, LOCAL, NONE)

# Per-class keys (``recall_<c>``, ``dice_c<c>``, ``val_cm_<c>_<d>``) are allowed for class
# indices below MAX_CLASSES; ``<b>`` is a bin of the validation score histograms.
MAX_CLASSES = 64
CLASS = "<c>"
CLASS2 = "<d>"
BIN = "<b>"
PLACEHOLDERS = {CLASS: MAX_CLASSES, CLASS2: MAX_CLASSES, BIN: HIST_BINS}


@dataclass(frozen=True)
class Release:
    """One field of one message type, under one DP mode."""

    message: str             # one of MESSAGE_TYPES
    field: str               # a metric key (``<c>`` = a class index), or a description
    private: str             # does it depend on private data: "yes", "no", "size" (n only)
    protection: str          # one of PROTECTIONS
    when: str                # one of WHEN
    note: str = ""
    metric: bool = True      # a key of the reply's MetricRecord (checked by the executor)

    @property
    def leaves(self) -> bool:
        return self.protection != LOCAL


_SIZE = "depends on n only through q = 1 / ceil(n / batch_size): n to within one batch"
_POLICY = "the site's own declared policy or ledger state, not its data"
_LOCAL = "kept in the local report"
_CM = ("test_metrics = 'noised' only, in the run's last max_metric_releases_per_run rounds, "
       "while the run's and the lifetime budget allow: read from the confusion matrix plus "
       "N(0, sigma^2) per cell (sigma = metric_noise_multiplier, L2 sensitivity 1; multilabel: "
       "the K one-vs-rest matrices, noise x sqrt(K)), charged (sigma, 1, 1) kind 'metrics'; "
       "else it stays local")
_AS_ACCURACY = "as accuracy"
_VAL = ("noised in the same Gaussian release as the test confusion matrix, N(0, sigma^2) per "
        "cell: a patient is in one split and in one cell, so the joint release has L2 "
        "sensitivity 1 and its one (sigma, 1, 1) charge of kind 'metrics' covers both; only "
        "when that release is made (test_metrics = 'noised'), else it stays local and the "
        "server selects no model and sets the operating point from the noised training "
        "class counts (train_class_count_<c>)")


def _train() -> list[Release]:
    r = [
        Release(TRAIN, "arrays (the model weights)", "yes", DP_SGD, DP,
                "Opacus DP-SGD with the site's plan (clipped per-sample gradients + Gaussian "
                "noise, Poisson sampling); with --ema-decay, the moving average of the round's "
                "DP-SGD iterates (post-processing of them); with --dp-class-balance, each "
                "record's clipped gradient weighted (<= 1) by its class from the noised class "
                "counts (same sensitivity); with --aug-multiplicity, each record's gradient the mean "
                "over its augmented copies before clipping (same sensitivity); DP models hold no data-dependent "
                "buffers (BatchNorm is refused)", metric=False),
        Release(TRAIN, "arrays (the model weights)", "yes", NONE, NO_DP,
                "dp='off': exact; dp='client': clipped and noised by the coordinator after "
                "aggregation, so not protected against the coordinator", metric=False),
        Release(TRAIN, "num-examples", "yes", CHARGED, DP,
                "sample_count = 'noised': n + N(0, sigma^2), sigma = count_noise_multiplier "
                "(sensitivity 1; single-label classification: the sum of the noised class "
                "counts below), clamped to >= 1, released once per run, charged (sigma, 1, "
                "1) kind 'count' and reused in later rounds (steps already tell n to within "
                "a batch; the noise hides the rest); 'equal': the constant 1.0 (public, equal "
                "FedAvg weights)"),
        Release(TRAIN, f"train_class_count_{CLASS}", "yes", CHARGED, DP,
                "single-label classification with sample_count = 'noised': the count release "
                "is the vector of training cases per class plus N(0, sigma^2) per class (a "
                "patient is in one class: L2 sensitivity 1, the same one charge of kind "
                "'count'); num-examples is its sum; rounded, clamped at 0, sent with the "
                "releasing round's reply only; the server's class prior sets the operating "
                "point when no validation statistics leave"),
        Release(TRAIN, "num-examples", "yes", NONE, NO_DP, "the exact training-set size"),
        Release(TRAIN, "count_noised", "no", PUBLIC, DP,
                "1.0 when num-examples is a noised count, 0.0 when it is the equal weight 1.0"),
        Release(TRAIN, "dp-weight", "no", PUBLIC, ALWAYS, "the constant 1.0"),
        Release(TRAIN, "steps", "size", PUBLIC, ALWAYS,
                "local_epochs x ceil(n / batch_size): reveals n to within one batch; treated "
                "as public"),
        Release(TRAIN, "sample_rate", "size", PUBLIC, DP,
                "q = 1 / ceil(n / batch_size): reveals n to within one batch; treated as "
                "public, like every field marked 'size'"),
        Release(TRAIN, "dp_steps", "size", PUBLIC, DP, "DP-SGD steps of the run so far"),
        Release(TRAIN, "noise_multiplier", "size", PUBLIC, DP,
                "calibrated from the target, q, steps and delta; " + _SIZE),
        Release(TRAIN, "delta", "size", PUBLIC, DP,
                "the default min(1e-5, 1/(10 n)) reveals n exactly when n > 10,000; a site "
                "that must hide its size fixes delta in its policy"),
        Release(TRAIN, "epsilon", "size", PUBLIC, DP, "the run's epsilon so far; " + _SIZE),
        Release(TRAIN, "target_epsilon", "no", PUBLIC, DP, _POLICY),
        Release(TRAIN, "lifetime_epsilon_spent", "size", PUBLIC, DP,
                "epsilon composed over every run on this dataset: says how much the site has "
                "taken part"),
        Release(TRAIN, "lifetime_epsilon_budget", "no", PUBLIC, DP, _POLICY),
        Release(TRAIN, "policy_id", "no", PUBLIC, ALWAYS,
                "the first 12 hex digits of the policy's sha256, as an integer"),
        Release(TRAIN, "secure_randomness", "no", PUBLIC, DP,
                "1.0 when sampling and noise came from the OS CSPRNG (deployment)"),
        Release(TRAIN, "replayed", "no", PUBLIC, DP,
                "1.0 when the reply is the cached answer to a request asked again"),
        Release(TRAIN, "proximal_mu", "no", PUBLIC, ALWAYS, "the coordinator's value, echoed"),
        Release(TRAIN, "site", "no", PUBLIC, ALWAYS, "the operator's site id"),
    ]
    for key, what in (("train_loss", "mean training loss of the last epoch"),
                      ("train_seconds", "wall-clock time of local training (grows with n)"),
                      ("client_seconds", "wall-clock time of the whole task (grows with n)"),
                      ("skipped_files", "number of bad data files the site left out")):
        r.append(Release(TRAIN, key, "yes", LOCAL, DP, f"{what}; {_LOCAL}"))
        r.append(Release(TRAIN, key, "yes", NONE, NO_DP, what))
    return r


def _evaluate() -> list[Release]:
    r = [
        Release(EVALUATE, "site", "no", PUBLIC, ALWAYS, "the operator's site id"),
        Release(EVALUATE, "num-examples", "no", PUBLIC, DP,
                "the constant 1.0 (equal weights); the test-set size stays local"),
        Release(EVALUATE, "num-examples", "yes", NONE, NO_DP,
                "the exact test-set size (1.0 when the policy keeps test metrics local)"),
        Release(EVALUATE, "dp-weight", "no", PUBLIC, ALWAYS, "the constant 1.0"),
        Release(EVALUATE, "withheld", "no", PUBLIC, ALWAYS,
                "1.0 when the test metrics stayed local (test_metrics = 'local', or no noised "
                "release due or allowed; num-examples is then 1.0), 0.0 when noised metrics "
                "follow; absent from an exact reply"),
    ]
    for key in ("accuracy", "balanced_accuracy", "sensitivity", "specificity"):
        r.append(Release(EVALUATE, key, "yes", CHARGED, DP,
                         _CM if key == "accuracy" else _AS_ACCURACY))
        r.append(Release(EVALUATE, key, "yes", NONE, NO_DP, "on the site's test split"))
    r.append(Release(EVALUATE, f"recall_{CLASS}", "yes", CHARGED, DP,
                     "per-class (multilabel: per-label) recall; " + _AS_ACCURACY))
    for key in ("loss", "precision", "f1", "auc"):
        r.append(Release(EVALUATE, key, "yes", LOCAL, DP, _LOCAL))
        r.append(Release(EVALUATE, key, "yes", NONE, NO_DP, "on the site's test split"))
    r += _validation()
    seg = [k for base in ("dice", "iou", "hd95", "asd") for k in (base, f"{base}_c{CLASS}")]
    for key in seg:
        r.append(Release(EVALUATE, key, "yes", LOCAL, DP,
                         "segmentation: no DP release of these yet; " + _LOCAL
                         if key == "dice" else "as dice"))
        r.append(Release(EVALUATE, key, "yes", NONE, NO_DP, "segmentation, on the test split"))
    return r


def _validation() -> list[Release]:
    """The validation statistics (`common.validation_stats`): they choose the global model and
    its operating point; they follow the test metrics' rule (test_metrics_release)."""
    r = []
    for key, what in (("val_loss", "mean cross-entropy of the global model on the site's val "
                                   "split (model selection: the server keeps the model with "
                                   "the lowest sample-weighted mean)"),
                      ("val_examples", "the size of the site's val split (the weight of its "
                                       "val_loss)")):
        r.append(Release(EVALUATE, key, "yes", LOCAL, DP, f"{what}; {_LOCAL}"))
        r.append(Release(EVALUATE, key, "yes", NONE, NO_DP, what))
    counts = ((f"val_hist_0_{BIN}", f"binary: the number of val cases of true label 0 whose "
                                    f"P(label 1) is in bin {BIN} of {HIST_BINS} equal bins on "
                                    f"[0, 1] ({NOISED_HIST_BINS} when noised; the threshold "
                                    f"is chosen from these, never from a patient's score)"),
              (f"val_hist_1_{BIN}", "as val_hist_0, for the val cases of true label 1"),
              (f"val_cm_{CLASS}_{CLASS2}", f"multi-class/ordinal: val cases of true class "
                                           f"{CLASS} predicted {CLASS2} (argmax); the row sums "
                                           f"give the class prior of the logit adjustment"))
    for key, what in counts:
        r.append(Release(EVALUATE, key, "yes", CHARGED, DP, f"{what}; {_VAL}"))
        r.append(Release(EVALUATE, key, "yes", NONE, NO_DP, what))
    r.append(Release(EVALUATE, "val_noise_sd", "no", PUBLIC, DP,
                     "the standard deviation of the noise on each noised val count (the site "
                     "policy's metric_noise_multiplier), sent with them: the server reads a "
                     "threshold from the noised histograms only when their class totals stand "
                     "out of that noise"))
    return r


def _other() -> list[Release]:
    return [
        Release(ERROR, "code", "no", PUBLIC, ALWAYS,
                "common.wire.ReplyCode: budget exhausted, policy refused, app refused, leaky "
                "reply, or 0 for a failed task", metric=False),
        Release(ERROR, "reason of a refusal", "no", PUBLIC, ALWAYS,
                "policy and budget refusals: the rule and public numbers (epsilon spent, "
                "budget), never a local path", metric=False),
        Release(ERROR, "reason of a failed task", "no", PUBLIC, ALWAYS,
                "the exception's type and a reference into the site's log only "
                "(client/executor.py failure_reason): its text, which may name a file or state "
                "a count, stays in the site's log (a simulated site, run by the researcher's "
                "own simulator, reports it in full)", metric=False),
        Release(SUPERNODE, "node id, registration", "no", PUBLIC, ALWAYS,
                "assigned by the SuperLink", metric=False),
        Release(SUPERNODE, "the site's public key", "no", PUBLIC, ALWAYS,
                "node authentication; the private key never leaves", metric=False),
        Release(SUPERNODE, "heartbeats, task status", "no", PUBLIC, ALWAYS,
                "liveness and 'completed'/'failed'", metric=False),
        Release(SUPERNODE, "message metadata and timing", "size", PUBLIC, ALWAYS,
                "ids, run id, timestamps; how long a reply takes grows with n (a side channel "
                "no noise covers, revealing about what steps does)", metric=False),
        Release(SUPERNODE, "audit log, ledger, replay cache, local report, data", "yes", LOCAL,
                ALWAYS, "files under the site's state dir (0600/0700)", metric=False),
    ]


RELEASES: tuple[Release, ...] = (*_train(), *_evaluate(), *_other())


def _expand(field: str) -> list[str]:
    """Every key a field with placeholders (`PLACEHOLDERS`) stands for."""
    present = [p for p in PLACEHOLDERS if p in field]
    out = []
    for values in itertools.product(*(range(PLACEHOLDERS[p]) for p in present)):
        key = field
        for placeholder, value in zip(present, values):
            key = key.replace(placeholder, str(value))
        out.append(key)
    return out


@functools.cache
def allowed_metric_keys(message_type: str, dp: bool) -> frozenset[str]:
    """The metric keys a ``message_type`` reply may carry under sample-level DP (``dp``) or not.

    Without DP every key that may leave in either mode is allowed (a site whose policy forces
    DP answers a dp='off' request with the DP fields); under DP only the DP rows that leave.
    """
    if message_type not in (TRAIN, EVALUATE):
        raise ValueError(f"message_type={message_type!r}: metric keys are listed for "
                         f"{TRAIN!r} and {EVALUATE!r} replies only")
    modes = (ALWAYS, DP) if dp else WHEN
    return frozenset(key for r in RELEASES
                     if r.metric and r.message == message_type and r.leaves and r.when in modes
                     for key in _expand(r.field))


def render_markdown() -> str:
    """docs/what-leaves.md: the threat model, then one table per message type."""
    lines = [
        "# What leaves a site",
        "",
        "Generated from `common/releases.py` (`render_markdown()`); a test checks this file "
        "equals it.",
        "",
        "**Threat model.** The coordinator is honest-but-curious and may send any "
        "configuration; outsiders see the network; only the site's own machine is trusted. "
        "The site decides what leaves it: a value that depends on private data and leaves is "
        "either noised and charged to the site's privacy ledger, or public (declared here, "
        "with what it reveals), or it does not leave. The site's executor refuses a reply "
        "holding a metric key not listed here for its message type and DP mode "
        "(`client/audit.py` `check_outgoing`, reply code 4032).",
        "",
        "Columns: *private* - does the value depend on the site's data (`size`: on the number "
        "of training records only); *when* - `dp` under sample-level DP (dp='sample'), "
        "`no-dp` without it (dp='off' or 'client', admitted only by a policy with "
        "require_dp = false), `always` both. `<c>` and `<d>` stand for class indices, `<b>` for a "
        "bin of the validation score histograms.",
        "",
        "Under DP the whole-run epsilon covers DP-SGD and every charged release: the planner "
        "calibrates sigma so that training plus the planned count and metric releases "
        "together spend the target (`common/privacy/planner.py` `plan(..., extra=...)`), and "
        "each release is charged to the site's ledger before it leaves "
        "(`common/privacy/mechanisms.py`, `client/release.py`).",
        "",
        "*Kept in the local report*: a deployed site appends the exact values that did not "
        "leave to `<state>/local-report.jsonl` (0600; `<state>` is the parent of the node "
        "config's `ledger-dir`); a simulated site keeps none (the simulator scores the final "
        "model itself).",
        "",
        "*Validation statistics* (`val_*`, evaluate replies): each site scores the global model "
        "on its own val split; the server keeps the best global model by them and chooses the "
        "operating point from them (`server/model_selection.py`, `common/operating_point.py`); "
        "the test splits choose nothing. They leave exactly when the test metrics do (no DP, "
        "a policy with test_metrics other than 'local'); under DP only their counts, noised "
        "with the test metrics' release; otherwise nothing, and the report says the selection "
        "was skipped.",
    ]
    for message in MESSAGE_TYPES:
        lines += ["", f"## {message}", "", "| field | private | protection | when | note |",
                  "|---|---|---|---|---|"]
        lines += [f"| `{r.field}` | {r.private} | {r.protection} | {r.when} | {r.note} |"
                  if r.metric else
                  f"| {r.field} | {r.private} | {r.protection} | {r.when} | {r.note} |"
                  for r in RELEASES if r.message == message]
    return "\n".join(lines) + "\n"
