"""The privacy outcome of a run, typed: each site's own ledger (with its own budget), or the
run's client-level epsilon; and what a non-federated baseline spent.

A site may set a smaller ``target_epsilon`` than the run's (`client.site.site_privacy`); it
reports the budget it trained under in every train reply, so each `LedgerRow` carries the site's
own ``target_epsilon`` and the report prints that, not the run's default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

from common.config import RunConfig
from common.privacy.central import ClientDPPlan


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
class SamplePrivacy:
    """dp='sample': DP-SGD at each site, accounted by each site's own ledger."""

    accountant: str
    max_grad_norm: float
    target_epsilon: float               # the run's budget per site (a site may set a smaller one)
    sites: dict[str, SitePrivacy]       # site id -> its ledger
    exhausted: dict[str, Exhaustion]    # node id -> when and why it stopped training
    mode: ClassVar[str] = "sample"

    @property
    def max_epsilon(self) -> float:
        return max((s.final.epsilon for s in self.sites.values()), default=0.0)

    def to_json(self) -> dict:
        return {"mode": self.mode, "accountant": self.accountant,
                "target_epsilon": self.target_epsilon, "max_grad_norm": self.max_grad_norm,
                "sites": {site: asdict(s.final) for site, s in self.sites.items()},
                "per_round": {site: [asdict(r) for r in s.rounds] for site, s in self.sites.items()},
                "exhausted": {node: asdict(e) for node, e in self.exhausted.items()},
                "max_epsilon": self.max_epsilon}


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
                   exhausted: dict[int, dict]) -> SamplePrivacy:
    """From the server's per-site ledger rows and the nodes that stopped on a spent budget."""
    sites = {site: SitePrivacy(tuple(LedgerRow(**row) for row in rows))
             for site, rows in ledgers.items() if rows}
    return SamplePrivacy(accountant=cfg.accountant, max_grad_norm=cfg.max_grad_norm,
                         target_epsilon=cfg.target_epsilon, sites=sites,
                         exhausted={str(node): Exhaustion(**info)
                                    for node, info in exhausted.items()})


def client_privacy(plan: ClientDPPlan, history: list[dict]) -> ClientPrivacy:
    """From the client-level DP plan (`server.central_dp.wrap_client_dp`) and the rounds'
    ``central_dp`` entries."""
    spent = [h for h in history if "central_dp" in h]
    last = spent[-1]["central_dp"]["epsilon"] if spent else 0.0
    per_round = {str(h["round"]): h["central_dp"]["epsilon"] for h in spent if h["round"] > 0}
    return ClientPrivacy(plan=plan, epsilon=last, per_round=per_round)


def privacy_outcome(cfg: RunConfig, history: list[dict], ledgers: dict[str, list[dict]],
                    exhausted: dict[int, dict],
                    central_plan: ClientDPPlan | None) -> SamplePrivacy | ClientPrivacy | None:
    """The run's privacy outcome for its dp mode; None without DP. dp='client' needs the plan
    it followed."""
    if cfg.dp == "client":
        if central_plan is None:
            raise ValueError("dp='client': no client-level DP plan was recorded for this run")
        return client_privacy(central_plan, history)
    if cfg.dp == "off":
        return None
    return sample_privacy(cfg, ledgers, exhausted)
