"""What one site has spent, across rounds and restarts, and the check before it spends more."""

from __future__ import annotations

from common.config import ConfigError
from common.privacy.accounting import epsilon_of_history, merged
from common.privacy.checks import check_accountant, check_entry, positive

# A round that brings epsilon to the budget exactly (a plan calibrated to it, up to rounding in
# the accountant) is within budget.
BUDGET_RTOL = 1e-9


class BudgetExhausted(Exception):
    """One more round would take a site's epsilon past its budget."""

    def __init__(self, *, epsilon: float, budget: float, delta: float, spent: float,
                 site: int | str | None = None) -> None:
        self.epsilon, self.budget, self.delta, self.spent, self.site = (
            epsilon, budget, delta, spent, site)
        where = f"site {site}: " if site is not None else ""
        super().__init__(
            f"{where}privacy budget exhausted: the next round would bring epsilon to "
            f"{epsilon:.4g} > budget {budget:g} at delta={delta:.3g} (spent so far: "
            f"{spent:.4g}); stop training or plan the run with more noise")


class PrivacyLedger:
    """Cumulative privacy spent by one site across rounds (survives restarts via state_dict).

    Mirrors the interface of Opacus' accountants: a history of ``(sigma, q, steps)``, equal
    consecutive ``(sigma, q)`` merged, epsilon recomputed from the whole history on demand.
    """

    def __init__(self, accountant: str = "rdp") -> None:
        self._accountant = check_accountant(accountant)
        self._history: list[tuple[float, float, int]] = []

    @property
    def accountant(self) -> str:
        return self._accountant

    @property
    def history(self) -> tuple[tuple[float, float, int], ...]:
        return tuple(self._history)

    @property
    def steps(self) -> int:
        return sum(t for _, _, t in self._history)

    def record(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Add ``steps`` DP-SGD steps taken with ``noise_multiplier`` at ``sample_rate``."""
        self._history = merged(self._history, check_entry(noise_multiplier, sample_rate, steps))

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0.0 when nothing is recorded)."""
        return epsilon_of_history(self._history, delta, self._accountant)

    def epsilon_if(self, noise_multiplier: float, sample_rate: float, steps: int,
                   delta: float) -> float:
        """Epsilon after recording one more such round; the ledger is left unchanged."""
        entry = check_entry(noise_multiplier, sample_rate, steps)
        return epsilon_of_history(merged(self._history, entry), delta, self._accountant)

    def check_budget(self, budget: float, noise_multiplier: float, sample_rate: float,
                     steps: int, delta: float, site: int | str | None = None) -> float:
        """Epsilon after one more such round; BudgetExhausted when it would exceed ``budget``
        (by more than `BUDGET_RTOL`). The ledger is left unchanged."""
        budget = positive("target_epsilon", budget)
        after = self.epsilon_if(noise_multiplier, sample_rate, steps, delta)
        if after > budget * (1 + BUDGET_RTOL):
            raise BudgetExhausted(epsilon=after, budget=budget, delta=delta,
                                  spent=self.epsilon(delta), site=site)
        return after

    def state_dict(self) -> dict:
        """JSON-serialisable state: ``{"accountant": str, "history": [[sigma, q, steps], ...]}``."""
        return {"accountant": self._accountant,
                "history": [[s, q, t] for s, q, t in self._history]}

    def load_state_dict(self, state: dict) -> None:
        """Replace this ledger's history with ``state``'s (same accountant required)."""
        if not isinstance(state, dict) or set(state) != {"accountant", "history"}:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ConfigError(f"privacy ledger state {keys!r}: expected a dict with exactly the "
                              f"keys 'accountant' and 'history'")
        if state["accountant"] != self._accountant:
            raise ConfigError(f"privacy ledger state: accountant={state['accountant']!r} but this "
                              f"ledger uses {self._accountant!r}; resume with the same accountant")
        history = state["history"]
        if not isinstance(history, list) or any(
                not isinstance(e, (list, tuple)) or len(e) != 3 for e in history):
            raise ConfigError(f"privacy ledger state: history={history!r}: expected a list of "
                              f"[noise_multiplier, sample_rate, steps] entries")
        entries: list[tuple[float, float, int]] = []
        for entry in history:
            entries = merged(entries, check_entry(*entry))
        self._history = entries

    @classmethod
    def from_state(cls, state: dict) -> "PrivacyLedger":
        """A ledger rebuilt from :meth:`state_dict` output."""
        if not isinstance(state, dict) or "accountant" not in state:
            raise ConfigError(f"privacy ledger state {state!r}: expected a dict with keys "
                              f"'accountant' and 'history'")
        ledger = cls(state["accountant"])
        ledger.load_state_dict(state)
        return ledger
