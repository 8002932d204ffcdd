"""The site's privacy policy (`--policy FILE`): readable, valid, and what it enforces."""

from __future__ import annotations

from pathlib import Path

from client.check import Check
from client.policy import SitePolicy, load_policy
from common.config import ConfigError


def policy_summary(policy: SitePolicy) -> str:
    """One line: where the policy came from and the rules that bound what the site spends."""
    unlimited = lambda v: "unlimited" if v == float("inf") else f"{v:g}"  # noqa: E731
    return (f"{policy.source} (digest {policy.digest()[:12]}): DP-SGD "
            f"{'required' if policy.require_dp else 'NOT required'}, epsilon at most "
            f"{unlimited(policy.max_epsilon_per_run)} per run and "
            f"{unlimited(policy.lifetime_epsilon)} over the dataset's lifetime")


def check_policy(path: Path) -> tuple[Check, SitePolicy | None]:
    """The policy check and the policy (None when it cannot be used). A valid policy that lets
    the site train without DP, or with seeded noise, is a warning: the coordinator could then
    see more than a DP guarantee allows."""
    name = "site policy"
    try:
        policy = load_policy(Path(path))
    except ConfigError as exc:
        return Check(name, "error", f"{exc}; the site refuses to start with it"), None
    summary = policy_summary(policy)
    if not policy.require_dp:
        return Check(name, "warning", f"{summary}; require_dp = false lets a run without DP "
                                      "train here"), policy
    if not policy.secure_randomness:
        return Check(name, "warning", f"{summary}; secure_randomness = false: DP noise would "
                                      "be seeded, reproducible by whoever knows the seed"), policy
    return Check(name, "ok", summary), policy


def check_budget(state: Path, policy: SitePolicy) -> Check:
    """Epsilon spent and left per dataset in the state folder's ledgers, under ``policy``; a
    ledger that fails verification is an error (the site refuses to train on that data)."""
    from client.ledger import ledger_status
    from client.service import LEDGERS

    name = "privacy budget"
    ledgers = Path(state) / LEDGERS
    spends = ledger_status(ledgers, policy) if ledgers.is_dir() else []
    if not spends:
        return Check(name, "ok", f"nothing spent yet: {policy.lifetime_epsilon:g} lifetime "
                                 "epsilon left for every dataset")
    broken = [s for s in spends if s.problem]
    if broken:
        return Check(name, "error", f"dataset {broken[0].fingerprint[:12]}: {broken[0].problem}")
    parts = [f"dataset {s.fingerprint[:12]}: spent {s.spent:.3f}, left {s.left:.3f}"
             for s in spends]
    status = "warning" if any(s.left <= 0 for s in spends) else "ok"
    return Check(name, status, f"{'; '.join(parts)} (lifetime budget "
                               f"{policy.lifetime_epsilon:g})")
