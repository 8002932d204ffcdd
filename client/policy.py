"""The site's own privacy policy: what this hospital allows, whatever the coordinator asks.

Threat model: the coordinator (the consortium server) is honest-but-curious and may send any run
configuration; outsiders see the network; only the site's own machine is trusted. So the limits
that protect the site's patients are set here, by the hospital, in a TOML file it reviews
(`fedclinic site --policy FILE`, example: deploy/site-policy.example.toml), and enforced at the
site before anything is computed: a request outside the policy gets a `policy-refused` reply
naming the rule (client.train_task), never the site's data.

Where a site's policy comes from (`policy_for`):

* deployment: node config ``policy-path`` (set by `fedclinic site --policy`), else
  `DEFAULT_POLICY` (DP required). A ``site-policy`` key the server sends is ignored.
* simulation (node config has ``partition-id``): the run config key ``site-policy`` (TOML text,
  put there by `fedclinic simulate --site-policy FILE`), else `SIMULATION_POLICY`, under which a
  dp=off simulation behaves as it always has.

The release settings (``sample_count``, ``test_metrics``, ``train_loss``) say what leaves; an
exact value never leaves a DP run ("exact" is accepted only with ``require_dp = false`` and
means noised/local under DP): `SitePolicy.sample_count_release`, `test_metrics_release`,
`train_loss_release` give the effective choice for a run with or without DP.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from common.config import MODELS, STRATEGIES, ConfigError
from common.wire import POLICY_REFUSED_REASON, SITE_POLICY_KEY

POLICY_PATH = "policy-path"   # node config: the site's policy file (`fedclinic site --policy`)
PARTITION_ID = "partition-id"   # as client.site: a simulated site's node config has it

SAMPLE_COUNTS = ("noised", "equal", "exact")
TEST_METRICS = ("local", "noised", "exact")
TRAIN_LOSSES = ("local", "exact")
MAX_EPSILON = 1e6                  # RunConfig.target_epsilon's upper bound
MAX_SIGMA = 1e4                    # RunConfig.noise_multiplier's upper bound


class PolicyRefused(ConfigError):
    """A request outside the site's policy. ``rule`` is the policy key that refused it; the
    message (which leaves the site as the refusal's reason) never holds a local path."""

    def __init__(self, rule: str, why: str) -> None:
        self.rule, self.why = rule, why
        super().__init__(f"{POLICY_REFUSED_REASON}: {rule}: {why}")


@dataclass(frozen=True)
class SitePolicy:
    """One site's privacy policy (TOML keys are the field names; `source` is not a key)."""

    require_dp: bool = True                 # dp=off and dp=client (server-side noise) refused
    max_epsilon_per_run: float = 8.0        # a run asking more (target or fixed sigma): refused
    lifetime_epsilon: float = 24.0          # over every run on this dataset (client.admission)
    delta: float | None = None              # None: min(1e-5, 1/(10 n)); a server may only lower it
    max_grad_norm: float | None = None      # None: the run's clipping norm; else the site's
    allowed_models: tuple[str, ...] = ()    # empty: any
    allowed_strategies: tuple[str, ...] = ()
    max_local_passes: int | None = None     # None: any; else the most passes over the site's
                                            # train split one request may ask (`local_passes`)
    max_width: int | None = None            # None: any; else the widest model (--width) allowed
    sample_count: str = "noised"            # "noised" (charged, once per run) | "equal" | "exact"
    count_noise_multiplier: float = 10.0    # sigma of the count release (sensitivity 1)
    test_metrics: str = "local"             # "local" (stay here) | "noised" (charged) | "exact"
    metric_noise_multiplier: float = 10.0   # sigma on confusion-matrix counts (L2 sensitivity 1)
    max_metric_releases_per_run: int = 1    # noised evaluate answers per run (planned, charged)
    train_loss: str = "local"               # "local" | "exact" (only ever in a run without DP)
    secure_randomness: bool = True          # OS CSPRNG noise and sampling (deployment)
    source: str = "default"                 # the file it came from, or "default"/"simulation"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):          # 3 -> 3.0, [..] -> (..), as TOML gives them
            object.__setattr__(self, f.name, _field_value(f.name, getattr(self, f.name)))
        problem = _problem(self)
        if problem:
            raise ConfigError(f"site policy ({self.source}): {problem}")

    # --- what leaves under this policy --------------------------------------------------------

    def sample_count_release(self, dp: bool) -> str:
        """How the training-sample count leaves: "equal" (equal weights, nothing released) if
        the policy says so; else under DP "noised" (an "exact" policy, which only a policy
        without require_dp can have, means noised there), without DP "exact" (the weights
        themselves leave un-noised then)."""
        if self.sample_count == "equal":
            return "equal"
        return "noised" if dp else "exact"

    def test_metrics_release(self, dp: bool) -> str:
        """How test metrics leave: "local" (they stay at the site) if the policy says so;
        under DP "noised" (charged) when the policy says "noised", else "local"; without DP
        "exact" ("noised" means exact there: nothing is accounted in a run without DP)."""
        if self.test_metrics == "local":
            return "local"
        if dp:
            return "noised" if self.test_metrics == "noised" else "local"
        return "exact"

    def train_loss_release(self, dp: bool) -> str:
        """"local" under DP; without DP what the policy says ("local" or "exact")."""
        return "local" if dp else self.train_loss

    def planned_releases(self) -> tuple[tuple[float, float, int], ...]:
        """The DP releases of a run besides training, as ledger triples (sigma, q=1, count):
        the noised sample count once, and up to `max_metric_releases_per_run` noised
        confusion matrices. Training's sigma is calibrated so that all of it fits the target."""
        extra: list[tuple[float, float, int]] = []
        if self.sample_count_release(dp=True) == "noised":
            extra.append((self.count_noise_multiplier, 1.0, 1))
        if self.test_metrics_release(dp=True) == "noised" and self.max_metric_releases_per_run:
            extra.append((self.metric_noise_multiplier, 1.0, self.max_metric_releases_per_run))
        return tuple(extra)

    # --- identity and presentation ------------------------------------------------------------

    def to_toml(self) -> str:
        """The policy as canonical TOML (every key, in field order; no ``delta``/
        ``max_grad_norm`` line when unset). `policy_from_text` reads it back."""
        lines = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "source" and value is not None:
                lines.append(f"{f.name} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def digest(self) -> str:
        """sha256 of `to_toml` (the content; where it came from does not change it)."""
        return hashlib.sha256(self.to_toml().encode()).hexdigest()

    @property
    def policy_id(self) -> int:
        """The digest's first 12 hex digits as an int: a scalar a reply can carry exactly."""
        return int(self.digest()[:12], 16)

    def render(self) -> str:
        """For people (`site doctor`, `site status`, reports): one line per rule."""
        delta = ("min(1e-5, 1/(10 n))" if self.delta is None else f"{self.delta:g}")
        clip = "the run's" if self.max_grad_norm is None else f"{self.max_grad_norm:g} (fixed)"
        metrics = self.test_metrics_release(dp=True)
        if metrics == "noised":
            metrics = (f"noised (sigma {self.metric_noise_multiplier:g}, at most "
                       f"{self.max_metric_releases_per_run} per run, charged)")
        count = self.sample_count_release(dp=True)
        if count == "noised":
            count = f"noised (sigma {self.count_noise_multiplier:g}, once per run, charged)"
        required = "yes (dp=off and dp=client refused)" if self.require_dp else "no"
        noise = "OS CSPRNG (deployment)" if self.secure_randomness else "seeded (reproducible)"
        lines = [
            f"site policy from {self.source} (digest {self.digest()[:12]})",
            f"  DP-SGD required:        {required}",
            f"  epsilon per run:        at most {_eps(self.max_epsilon_per_run)}",
            f"  lifetime epsilon:       at most {_eps(self.lifetime_epsilon)} over every run "
            f"on this dataset",
            f"  delta:                  {delta} (a server may only lower it)",
            f"  clipping norm:          {clip}",
            f"  models allowed:         {', '.join(self.allowed_models) or 'any'}",
            f"  strategies allowed:     {', '.join(self.allowed_strategies) or 'any'}",
            f"  passes per request:     {_most(self.max_local_passes)} (local epochs x "
            f"augmented copies; fine-tuning epochs)",
            f"  model width:            {_most(self.max_width)}",
            f"  under DP, sample count: {count}",
            f"  under DP, test metrics: {metrics}",
            "  under DP, train loss:   stays at the site",
            f"  randomness:             {noise}",
        ]
        if not self.require_dp:
            lines.append(f"  without DP:             sample count "
                         f"{self.sample_count_release(False)}, test metrics "
                         f"{self.test_metrics_release(False)}, train loss "
                         f"{self.train_loss_release(False)}")
        return "\n".join(lines)


def _most(value: int | None) -> str:
    return "any" if value is None else f"at most {value}"


def local_passes(local_epochs: int, aug_multiplicity: int = 1) -> int:
    """Forward and backward passes over the site's train split that one train round asks:
    each local epoch, and under ``--aug-multiplicity K`` each of a record's K augmented copies,
    is one more pass. The compute a coordinator can make a site spend per request grows with
    it (and with the model's width), whatever the privacy cost: `max_local_passes` caps it."""
    return local_epochs * aug_multiplicity


def _eps(value: float) -> str:
    return "unlimited" if math.isinf(value) else f"{value:g}"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


# ---------------------------------------------------------------------------------- checking

# key -> (expected, check). Floats may be given as TOML integers (``lifetime_epsilon = 3``).
def _positive(hi: float):
    return lambda v: isinstance(v, float) and math.isfinite(v) and 0 < v <= hi


def _one_of(choices: tuple[str, ...]):
    return lambda v: isinstance(v, str) and v in choices


def _int_or_none(lo: int):
    return lambda v: v is None or type(v) is int and v >= lo


def _names_in(choices: tuple[str, ...]):
    return lambda v: isinstance(v, tuple) and all(isinstance(x, str) and x in choices for x in v)


_RULES: dict[str, tuple[str, Any]] = {
    "require_dp": ("true or false", lambda v: isinstance(v, bool)),
    "max_epsilon_per_run": (f"a finite number > 0 and <= {MAX_EPSILON:g}", _positive(MAX_EPSILON)),
    "lifetime_epsilon": (f"a finite number > 0 and <= {MAX_EPSILON:g}", _positive(MAX_EPSILON)),
    "delta": ("a number with 0 < delta <= 1e-3 (leave it out for min(1e-5, 1/(10 n)))",
              lambda v: v is None or isinstance(v, float) and 0 < v <= 1e-3),
    "max_grad_norm": ("a finite number > 0 and <= 1e6 (leave it out for the run's)",
                      lambda v: v is None or _positive(1e6)(v)),
    "allowed_models": (f"a list of model names from: {', '.join(MODELS)}", _names_in(MODELS)),
    "allowed_strategies": (f"a list of strategy names from: {', '.join(STRATEGIES)}",
                           _names_in(STRATEGIES)),
    "max_local_passes": ("an integer >= 1 (leave it out for any)", _int_or_none(1)),
    "max_width": ("an integer >= 4 (leave it out for any)", _int_or_none(4)),
    "sample_count": (f"one of {', '.join(SAMPLE_COUNTS)}", _one_of(SAMPLE_COUNTS)),
    "count_noise_multiplier": (f"a finite number > 0 and <= {MAX_SIGMA:g}", _positive(MAX_SIGMA)),
    "test_metrics": (f"one of {', '.join(TEST_METRICS)}", _one_of(TEST_METRICS)),
    "metric_noise_multiplier": (f"a finite number > 0 and <= {MAX_SIGMA:g}", _positive(MAX_SIGMA)),
    "max_metric_releases_per_run": ("an integer >= 0",
                                    lambda v: type(v) is int and v >= 0),
    "train_loss": (f"one of {', '.join(TRAIN_LOSSES)}", _one_of(TRAIN_LOSSES)),
    "secure_randomness": ("true or false", lambda v: isinstance(v, bool)),
    "source": ("text", lambda v: isinstance(v, str)),
}
_UNLIMITED_OK = ("max_epsilon_per_run", "lifetime_epsilon")   # inf: SIMULATION_POLICY only


def _problem(policy: SitePolicy) -> str:
    """'' if every field is valid, else which key is wrong and what it expects."""
    for f in dataclasses.fields(policy):
        value = getattr(policy, f.name)
        expected, ok = _RULES[f.name]
        if f.name in _UNLIMITED_OK and value == math.inf and policy.source == "simulation":
            continue
        if not ok(value):
            return f"{f.name} = {value!r}: expected {expected}"
    if policy.require_dp:
        for key in ("sample_count", "test_metrics", "train_loss"):
            if getattr(policy, key) == "exact":
                return (f'{key} = "exact" with require_dp = true: an exact value never leaves '
                        f"a DP run; use {_dp_choices(key)}")
    return ""


def _dp_choices(key: str) -> str:
    return {"sample_count": '"noised" or "equal"', "test_metrics": '"local" or "noised"',
            "train_loss": '"local"'}[key]


_FLOAT_KEYS = frozenset({"max_epsilon_per_run", "lifetime_epsilon", "delta", "max_grad_norm",
                         "count_noise_multiplier", "metric_noise_multiplier"})


def _field_value(key: str, value: Any) -> Any:
    """A value as the field's type: an integer for a number (TOML ``3``) -> float, a list ->
    tuple; anything else as it is (and checked)."""
    if key in ("allowed_models", "allowed_strategies") and isinstance(value, list):
        return tuple(value)
    if key in _FLOAT_KEYS and type(value) is int:
        return float(value)
    return value


def policy_from_text(text: str, source: str) -> SitePolicy:
    """A policy from TOML text; `source` names it in errors (a file path, or where it came from).
    Unknown keys, wrong types and out-of-range values are ConfigErrors naming source, key and
    what is expected."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from None
    keys = [f.name for f in dataclasses.fields(SitePolicy) if f.name != "source"]
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise ConfigError(f"{source}: unknown policy key {unknown[0]!r}; known keys: "
                          f"{', '.join(keys)}")
    values = {k: _field_value(k, v) for k, v in data.items()}
    for key, value in values.items():
        expected, ok = _RULES[key]
        if value == math.inf or not ok(value):
            raise ConfigError(f"{source}: {key} = {data[key]!r}: expected {expected}")
    try:
        return SitePolicy(**values, source=source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {str(exc).split(': ', 1)[1]}") from None


def load_policy(path: Path | None) -> SitePolicy:
    """The site's policy from a TOML file (None: `DEFAULT_POLICY`); see `policy_from_text`."""
    if path is None:
        return DEFAULT_POLICY
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read the site policy ({reason})") from None
    return policy_from_text(text, str(path))


DEFAULT_POLICY = SitePolicy()

# What a simulated site runs without `--site-policy`: no floor (a dp=off simulation behaves as
# it always has: exact counts, metrics and loss), unlimited epsilon; under DP only noised,
# charged releases leave, planned into the run's target: the count once, and in the run's last
# round the test confusion matrix with the validation score histograms (test_metrics =
# "noised": the server sets the operating point from them - on three PneumoniaMNIST DP runs
# at epsilon 8 a mean val balanced accuracy of 0.882 against 0.768 at the argmax, with 10
# noised bins, docs/recipes.md); the loss stays local. Seeded, reproducible noise. A deployed
# site's default policy keeps its metrics local unless its operator says "noised".
SIMULATION_POLICY = SitePolicy(
    require_dp=False, max_epsilon_per_run=math.inf, lifetime_epsilon=math.inf,
    sample_count="exact", test_metrics="noised", train_loss="exact", secure_randomness=False,
    source="simulation")


def is_simulated(node_config: Mapping[str, object]) -> bool:
    return PARTITION_ID in node_config


def policy_for(node_config: Mapping[str, object], config: Mapping[str, object]) -> SitePolicy:
    """The policy in force for one task (see the module docstring). ``config`` is the message's
    config record; only a simulated site reads its ``site-policy`` key."""
    if is_simulated(node_config):
        text = config.get(SITE_POLICY_KEY)
        if text:
            return policy_from_text(str(text), "simulate --site-policy")
        return SIMULATION_POLICY
    path = node_config.get(POLICY_PATH)
    return load_policy(Path(str(path))) if path else DEFAULT_POLICY
