"""The privacy outcome of a run, typed: each site's own ledger (with its own budget), or the
run's client-level epsilon; and what a non-federated baseline spent.

A site may set a smaller ``target_epsilon`` than the run's (`client.site.site_privacy`); it
reports the budget it trained under in every train reply, so each `LedgerRow` carries the site's
own ``target_epsilon`` and the report prints that, not the run's default.

A site that enforces its own policy also reports, per round, what its lifetime ledger (every run
on its dataset) has spent and allows, the id of its policy, whether its sample count was released
noised, and whether its DP noise came from the OS CSPRNG; `SiteGuarantee` is that, per site, as
the report states it. Rows from sites that send none of it keep those fields None.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from common.config import RunConfig
from common.privacy.central import ClientDPPlan
from common.report.policy import PolicySummary


@dataclass(frozen=True)
class LedgerRow:
    """One round of one site's privacy ledger, as the site reported it in its train reply."""

    round: int
    epsilon: float            # cumulative: the site's whole run up to this round
    target_epsilon: float     # the site's own budget for the whole run
    delta: float
    noise_multiplier: float
    sample_rate: float
    dp_steps: int             # DP-SGD steps so far
    lifetime_epsilon_spent: float | None = None    # every run on the site's dataset, this included
    lifetime_epsilon_budget: float | None = None   # the site policy's lifetime_epsilon
    policy_id: int | None = None        # the site policy's digest, first 12 hex digits
    count_noised: bool | None = None    # the sample count left noised (charged), not exact
    secure_randomness: bool | None = None   # noise/sampling from the OS CSPRNG, not a seed

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "LedgerRow":
        """From a privacy_ledger.json row (`server.round_log`): the fields this record knows,
        others ignored (a newer site may send more), the optional ones None when absent."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        missing = [n for n, f in names.items() if f.default is dataclasses.MISSING
                   and n not in row]
        if missing:
            raise ValueError(f"privacy ledger row {row}: missing {', '.join(missing)}")
        values = {k: v for k, v in row.items() if k in names
                  and (v is not None or names[k].default is dataclasses.MISSING)}
        for flag in ("count_noised", "secure_randomness"):
            if values.get(flag) is not None:
                values[flag] = bool(values[flag])
        for whole in ("round", "dp_steps", "policy_id"):
            if values.get(whole) is not None:
                values[whole] = int(values[whole])
        return cls(**values)


@dataclass(frozen=True)
class SiteGuarantee:
    """What one site's privacy came to, as the report states it: the run's epsilon at its delta
    by its accountant, its lifetime budget spent and left, the policy it enforced, how its noise
    was drawn. None: the site did not report it."""

    epsilon: float
    delta: float
    accountant: str
    target_epsilon: float
    lifetime_spent: float | None
    lifetime_budget: float | None
    lifetime_left: float | None
    policy_id: int | None
    count_noised: bool | None
    secure_randomness: bool | None


@dataclass(frozen=True)
class SitePrivacy:
    """One site's ledger rows, in round order (at least one)."""

    rounds: tuple[LedgerRow, ...]

    @property
    def final(self) -> LedgerRow:
        return self.rounds[-1]


@dataclass(frozen=True)
class Exhaustion:
    """A node that refused to train because its budget was spent."""

    round: int
    reason: str


@dataclass(frozen=True)
class Refusal:
    """A node whose own site policy refused the run (reply code 4033), and the rule."""

    round: int
    reason: str
    rule: str


@dataclass(frozen=True)
class SamplePrivacy:
    """dp='sample': DP-SGD at each site, accounted by each site's own ledger."""

    accountant: str
    max_grad_norm: float
    target_epsilon: float               # the run's budget per site (a site may set a smaller one)
    sites: dict[str, SitePrivacy]       # site id -> its ledger
    exhausted: dict[str, Exhaustion]    # node id -> when and why it stopped training
    policy: PolicySummary | None = None  # simulation: the policy every site ran under
    refused: dict[str, Refusal] = dataclasses.field(default_factory=dict)   # node id -> refusal
    mode: ClassVar[str] = "sample"

    @property
    def max_epsilon(self) -> float:
        return max((s.final.epsilon for s in self.sites.values()), default=0.0)

    def guarantees(self) -> dict[str, SiteGuarantee]:
        """Per site, from its last ledger row; a simulation's policy fills in the noise source
        and lifetime budget a site did not report."""
        return {site: self._guarantee(s.final) for site, s in self.sites.items()}

    def _guarantee(self, row: LedgerRow) -> SiteGuarantee:
        budget = row.lifetime_epsilon_budget
        secure = row.secure_randomness
        if self.policy is not None:
            budget = self.policy.lifetime_epsilon if budget is None else budget
            secure = self.policy.secure_randomness if secure is None else secure
        spent = row.lifetime_epsilon_spent
        left = None if spent is None or budget is None else max(budget - spent, 0.0)
        return SiteGuarantee(epsilon=row.epsilon, delta=row.delta, accountant=self.accountant,
                             target_epsilon=row.target_epsilon, lifetime_spent=spent,
                             lifetime_budget=budget, lifetime_left=left, policy_id=row.policy_id,
                             count_noised=row.count_noised, secure_randomness=secure)

    def to_json(self) -> dict:
        out = {"mode": self.mode, "accountant": self.accountant,
               "target_epsilon": self.target_epsilon, "max_grad_norm": self.max_grad_norm,
               "sites": {site: asdict(s.final) for site, s in self.sites.items()},
               "per_round": {site: [asdict(r) for r in s.rounds] for site, s in self.sites.items()},
               "exhausted": {node: asdict(e) for node, e in self.exhausted.items()},
               "max_epsilon": self.max_epsilon,
               "guarantee": {site: asdict(g) for site, g in self.guarantees().items()},
               "refused": {node: asdict(r) for node, r in self.refused.items()}}
        if self.policy is not None:
            out["policy"] = {**asdict(self.policy), "policy_id": self.policy.policy_id}
        return out


@dataclass(frozen=True)
class ClientPrivacy:
    """dp='client': Flower's server-side clipping and noise (the plan it followed), the run's
    client-level epsilon."""

    plan: ClientDPPlan
    epsilon: float                      # spent by the whole run (Flower's accountant)
    per_round: dict[str, float]         # round -> epsilon spent up to it
    mode: ClassVar[str] = "client"

    @property
    def max_epsilon(self) -> float:
        return self.epsilon

    def to_json(self) -> dict:
        """The plan's fields flat beside what was spent, as summary.json has always had them."""
        return {"mode": self.mode, **asdict(self.plan), "epsilon": self.epsilon,
                "per_round": dict(self.per_round), "max_epsilon": self.max_epsilon}


@dataclass(frozen=True)
class SpentPrivacy:
    """What a baseline model trained under DP-SGD spent (one ledger, whole training)."""

    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    dp_steps: int


def sample_privacy(cfg: RunConfig, ledgers: dict[str, list[dict]],
                   exhausted: dict[int, dict],
                   refused: dict[int, dict] | None = None) -> SamplePrivacy:
    """From the server's per-site ledger rows, the nodes that stopped on a spent budget and
    those their own policy refused (`server.round_log.RoundLog`)."""
    sites = {site: SitePrivacy(tuple(LedgerRow.from_row(row) for row in rows))
             for site, rows in ledgers.items() if rows}
    return SamplePrivacy(accountant=cfg.accountant, max_grad_norm=cfg.max_grad_norm,
                         target_epsilon=cfg.target_epsilon, sites=sites,
                         exhausted={str(node): Exhaustion(**info)
                                    for node, info in exhausted.items()},
                         refused={str(node): Refusal(int(info["round"]), str(info["reason"]),
                                                     str(info["rule"]))
                                  for node, info in (refused or {}).items()})


def client_privacy(plan: ClientDPPlan, history: list[dict]) -> ClientPrivacy:
    """From the client-level DP plan (`server.central_dp.wrap_client_dp`) and the rounds'
    ``central_dp`` entries."""
    spent = [h for h in history if "central_dp" in h]
    last = spent[-1]["central_dp"]["epsilon"] if spent else 0.0
    per_round = {str(h["round"]): h["central_dp"]["epsilon"] for h in spent if h["round"] > 0}
    return ClientPrivacy(plan=plan, epsilon=last, per_round=per_round)


def privacy_outcome(cfg: RunConfig, history: list[dict], ledgers: dict[str, list[dict]],
                    exhausted: dict[int, dict], central_plan: ClientDPPlan | None,
                    refused: dict[int, dict] | None = None
                    ) -> SamplePrivacy | ClientPrivacy | None:
    """The run's privacy outcome for its dp mode; None without DP. dp='client' needs the plan
    it followed; ``refused``: nodes whose policy refused the run (dp='sample')."""
    if cfg.dp == "client":
        if central_plan is None:
            raise ValueError("dp='client': no client-level DP plan was recorded for this run")
        return client_privacy(central_plan, history)
    if cfg.dp == "off":
        return None
    return sample_privacy(cfg, ledgers, exhausted, refused)
