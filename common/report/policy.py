"""The site privacy policy a report states, typed: where it came from, its digest and the rules
a privacy officer checks first.

The policy itself lives at the site (`client.policy.SitePolicy`; common may not import client),
so `policy_summary` reads any object with its attributes. A simulation knows the policy every
simulated site ran under and reports it whole; a deployed server sees only what each site sends
in its train reply (the policy id, the lifetime budget, whether its noise came from a CSPRNG),
never the policy file or its path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ID_HEX = 12      # a policy id: the first 12 hex digits of the digest (an int on the wire)


@dataclass(frozen=True)
class PolicySummary:
    """The rules of one site policy that a report prints (all of them public: no path, no data)."""

    source: str                     # "default", "simulation" or the file's name (never its path)
    digest: str                     # sha256 hex of the policy's canonical content
    require_dp: bool
    max_epsilon_per_run: float      # inf: no limit (simulation only)
    lifetime_epsilon: float         # inf: no limit (simulation only)
    delta: float | None             # None: min(1e-5, 1/(10 n)) at each site
    sample_count: str               # "noised" | "equal" | "exact"
    test_metrics: str               # "local" | "noised" | "exact"
    train_loss: str                 # "local" | "exact"
    secure_randomness: bool         # OS CSPRNG noise and sampling (deployment) vs seeded
    count_release: str = ""         # in this run: how the count left ("noised", "equal", ...)
    metrics_release: str = ""       # in this run: how test metrics left ("local", "noised", ...)
    loss_release: str = ""          # in this run: how the training loss left ("local", "exact")

    @property
    def policy_id(self) -> int:
        """The id sites send in their train replies (`policy_id`): the digest's first 12 digits."""
        return int(self.digest[:ID_HEX], 16)

    def rules(self) -> str:
        """One line: the rules that decide the guarantee."""
        delta = "min(1e-5, 1/(10 n))" if self.delta is None else f"{self.delta:.1e}"
        return (f"DP required: {'yes' if self.require_dp else 'no'}; max epsilon per run "
                f"{limit(self.max_epsilon_per_run)}; lifetime epsilon "
                f"{limit(self.lifetime_epsilon)}; delta {delta}; sample count "
                f"{_release(self.sample_count, self.count_release)}; test metrics "
                f"{_release(self.test_metrics, self.metrics_release)}; train loss "
                f"{_release(self.train_loss, self.loss_release)}; noise and sampling "
                f"{'from the OS CSPRNG' if self.secure_randomness else 'seeded (reproducible)'}")


def _release(rule: str, in_run: str) -> str:
    """'noised' or 'exact (in this run: local)': the rule, and what it meant in this run."""
    return rule if not in_run or in_run == rule else f"{rule} (in this run: {in_run})"


def limit(value: float) -> str:
    return "no limit" if not math.isfinite(value) else f"{value:g}"


def policy_summary(policy: Any, dp: bool | None = None) -> PolicySummary:
    """From a `client.policy.SitePolicy` (or anything with its attributes and ``digest()``).
    A file source is reduced to its name: the report may travel, the site's paths do not.
    ``dp``: whether the run used sample-level DP, to say what each release rule meant in it
    (the policy's ``*_release(dp)``); None: not said."""
    source = str(policy.source)
    if source not in ("default", "simulation"):
        source = source.replace("\\", "/").rsplit("/", 1)[-1]
    delta = policy.delta
    return PolicySummary(
        source=source, digest=str(policy.digest()), require_dp=bool(policy.require_dp),
        max_epsilon_per_run=float(policy.max_epsilon_per_run),
        lifetime_epsilon=float(policy.lifetime_epsilon),
        delta=None if delta is None else float(delta), sample_count=str(policy.sample_count),
        test_metrics=str(policy.test_metrics), train_loss=str(policy.train_loss),
        secure_randomness=bool(policy.secure_randomness),
        **({} if dp is None else {
            "count_release": str(policy.sample_count_release(dp)),
            "metrics_release": str(policy.test_metrics_release(dp)),
            "loss_release": str(policy.train_loss_release(dp))}))


def policy_hex(policy_id: int | None) -> str:
    """A policy id as the 12 hex digits it was cut from ('-' when the site sent none)."""
    return "-" if policy_id is None else f"{int(policy_id):0{ID_HEX}x}"
