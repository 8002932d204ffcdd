"""Differential-privacy planning and accounting for DP-SGD at each site (Opacus accountants).

Honesty rules this module enforces:

* The noise multiplier is calibrated for the WHOLE planned run (rounds x local steps), with the
  same accountant (``rdp`` or ``prv``) that later reports epsilon, so the epsilon a run reports
  at its end is the one it planned, never a per-round figure.
* The sampling schedule is Opacus' own. ``PrivacyEngine.make_private`` on a
  ``DataLoader(dataset, batch_size=B)`` (``drop_last=False``) has ``L = ceil(n / B)`` batches; it
  swaps in a ``DPDataLoader`` that includes every sample with probability ``1 / L`` and yields
  ``int(1 / (1 / L))`` batches per epoch (``UniformWithReplacementSampler``: ``steps =
  int(1 / sample_rate)``; in floating point that is ``L - 1`` for some ``L``, e.g. 93). The
  accountant is then stepped with ``sample_rate = 1 / len(dp_loader)``.
  :func:`poisson_sampling` returns exactly that pair, so a ledger fed with ``PrivacyPlan.
  sample_rate`` and ``steps_per_round`` holds the same history as Opacus' own accountant.
  (``q = B / n`` and ``round(n / B)`` steps would differ from it whenever B does not divide n.)
  A trainer that samples by itself instead must include each sample with probability at most
  ``sample_rate`` and take exactly ``steps_per_round`` steps per round.
* The per-round history merges equal ``(sigma, q)`` entries like Opacus' accountants, so after
  ``r`` rounds the ledger's history is ``[(sigma, q, r * steps_per_round)]``: exactly the
  history the plan was calibrated on, hence the same epsilon (also across stop-and-resume, via
  :meth:`PrivacyLedger.state_dict`).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from common.config import ACCOUNTANTS, ConfigError, RunConfig

MAX_NOISE_MULTIPLIER = 1e4        # RunConfig.noise_multiplier's upper bound
MIN_NOISE_MULTIPLIER = 1e-2       # calibration does not search below this sigma
CALIBRATION_RTOL = 0.005          # calibrated epsilon lies in [target * (1 - rtol), target]
PRV_MAX_GRID = 5_000_000          # PRV discretisation points (~170 bytes each) we allow

History = Sequence[Sequence[float]]


# How a site's refusal reads on the wire (reason prefix of its error reply), shared by the site
# that refuses and the server that records it and stops sampling that site.
BUDGET_EXHAUSTED_REASON = "budget-exhausted"


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


# --------------------------------------------------------------------------- validation

def _int_arg(name: str, value: Any, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{name}={value!r}: expected an integer >= {lo}")
    return value


def _positive(name: str, value: Any, hi: float = math.inf) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0 < value <= hi:
        bound = f" and <= {hi:g}" if math.isfinite(hi) else ""
        raise ConfigError(f"{name}={value!r}: expected a finite number > 0{bound}")
    return float(value)


def _check_accountant(accountant: Any) -> str:
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"accountant={accountant!r}: unknown; expected one of "
                          f"{', '.join(ACCOUNTANTS)}")
    return accountant


def _check_delta(delta: Any, n_train: int | None = None) -> float:
    ok = isinstance(delta, (int, float)) and not isinstance(delta, bool)
    if not ok or not math.isfinite(delta) or not 0 < delta < 1:
        raise ConfigError(f"delta={delta!r}: expected 0 < delta < 1 (default: 1/(10 n))")
    if n_train is not None and delta >= 1 / n_train:
        raise ConfigError(f"delta={delta!r} >= 1/n_train = {1 / n_train:.3g}: a delta that large "
                          f"allows leaking a whole patient record; use delta < 1/n_train "
                          f"(default: 1/(10 n) = {default_delta(n_train):.3g})")
    return float(delta)


def _check_entry(noise_multiplier: Any, sample_rate: Any, steps: Any) -> tuple[float, float, int]:
    sigma = _positive("noise_multiplier", noise_multiplier)
    q = _positive("sample_rate", sample_rate, hi=1.0)
    return sigma, q, _int_arg("steps", steps)


# --------------------------------------------------------------------------- sampling

def default_delta(n_train: int) -> float:
    """``1 / (10 n)``: delta must be well below ``1/n``.

    A mechanism that publishes one random record in full is (0, 1/n)-DP, so any delta >= 1/n
    allows a total leak of some patient; a tenth of that keeps the failure probability small
    while, for the few hundred to few thousand records of a site, costing little epsilon.
    """
    return 1.0 / (10 * _int_arg("n_train", n_train))


def poisson_sampling(n_train: int, batch_size: int) -> tuple[float, int]:
    """``(sample_rate, steps_per_epoch)`` exactly as Opacus' ``make_private`` accounts them.

    See the module docstring: ``L = ceil(n / B)`` batches of the plain loader, ``int(1 / (1/L))``
    Poisson batches per epoch, each sample drawn with probability ``1 / L``, accounted with
    ``1 / steps_per_epoch`` (equal to ``1 / L``, or a conservative ``1 / (L - 1)``).
    """
    n, b = _int_arg("n_train", n_train), _int_arg("batch_size", batch_size)
    batches = -(-n // b)          # ceil(n / B): len(DataLoader(batch_size=B, drop_last=False))
    steps = int(1 / (1 / batches))
    return 1 / steps, steps


# --------------------------------------------------------------------------- epsilon

def _merged(history: History, entry: tuple[float, float, int]) -> list[tuple[float, float, int]]:
    """``history`` plus ``entry``; equal consecutive (sigma, q) are merged, as Opacus does."""
    out = [(float(s), float(q), int(t)) for s, q, t in history]
    if out and out[-1][:2] == entry[:2]:
        out[-1] = (entry[0], entry[1], out[-1][2] + entry[2])
    else:
        out.append(entry)
    return out


class _PRVTooLarge(ConfigError):
    """The PRV accountant would need more memory than we allow for this history."""


@functools.cache
def _guarded_prv_class() -> type:
    """Opacus' PRVAccountant that refuses, before allocating it, a grid over PRV_MAX_GRID points.

    The grid grows as sigma shrinks (sigma=0.1, q=1/63, 630 steps: 1.2e8 points, ~20 GB).
    """
    from opacus.accountants import PRVAccountant

    class GuardedPRVAccountant(PRVAccountant):
        def _get_domain(self, *args: Any, **kwargs: Any) -> Any:
            domain = super()._get_domain(*args, **kwargs)
            if domain.size > PRV_MAX_GRID:
                raise _PRVTooLarge(
                    f"accountant='prv' would need a {domain.size:,}-point grid (limit "
                    f"{PRV_MAX_GRID:,}) for {_describe(self.history)}; use accountant='rdp' or "
                    f"more noise")
            return domain

    return GuardedPRVAccountant


def epsilon_of_history(history: History, delta: float, accountant: str) -> float:
    """Epsilon at ``delta`` of a DP-SGD history ``[(sigma, q, steps), ...]``, by Opacus.

    Builds a fresh Opacus accountant, sets its history and asks it (PRV: the upper bound with
    Opacus' default error settings, as ``PrivacyEngine.get_epsilon`` does). 0.0 for an empty
    history. Raises ConfigError when the PRV accountant cannot evaluate the history.
    """
    _check_accountant(accountant)
    delta = _check_delta(delta)
    entries = tuple(_check_entry(*entry) for entry in history)
    return _epsilon(entries, delta, accountant) if entries else 0.0


@functools.lru_cache(maxsize=256)
def _epsilon(entries: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    """Opacus' epsilon for validated entries (deterministic, so cached: PRV costs ~1 s)."""
    from opacus.accountants import create_accountant

    acc = (_guarded_prv_class()() if accountant == "prv"
           else create_accountant(mechanism=accountant))
    acc.history = list(entries)
    with warnings.catch_warnings():
        # RDP: "optimal order is the largest alpha" only says the bound could be tighter.
        warnings.filterwarnings("ignore", message="Optimal order")
        try:
            eps = float(acc.get_epsilon(delta=delta))
        except _PRVTooLarge:
            raise
        except (ArithmeticError, ValueError, RuntimeError, MemoryError) as exc:
            raise ConfigError(f"accountant={accountant!r} failed for {_describe(entries)} at "
                              f"delta={delta:.3g} ({type(exc).__name__}: {exc}); "
                              f"use accountant='rdp' or more noise") from None
    if math.isnan(eps):
        raise ConfigError(f"accountant={accountant!r} returned no epsilon for "
                          f"{_describe(entries)}; use accountant='rdp' or more noise")
    return eps


def _describe(entries: Iterable[tuple[float, float, int]]) -> str:
    return ", ".join(f"(sigma={s:.4g}, q={q:.4g}, steps={t})" for s, q, t in entries)


# --------------------------------------------------------------------------- calibration

def calibrate_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float,
                               steps: int, accountant: str = "rdp") -> float:
    """Smallest sigma (to within CALIBRATION_RTOL in epsilon) whose ``steps``-step run at
    ``sample_rate`` spends at most ``target_epsilon`` at ``delta`` with ``accountant``.

    A bracketing search on sigma (epsilon decreases as sigma grows). The returned sigma always
    satisfies ``epsilon <= target`` with the given accountant. PRV starts from the (cheap) RDP
    sigma, an upper bound for it as PRV is the tighter accountant.
    """
    target = _positive("target_epsilon", target_epsilon)
    delta = _check_delta(delta)
    q, steps = _check_entry(1.0, sample_rate, steps)[1:]
    _check_accountant(accountant)

    hi_start = _rdp_sigma_or_max(target, delta, q, steps) if accountant == "prv" else 1.0

    def eps(sigma: float) -> float:
        try:
            return epsilon_of_history([(sigma, q, steps)], delta, accountant)
        except _PRVTooLarge:
            if sigma >= hi_start:
                raise
            return math.inf   # grids explode at small sigma, where epsilon is large: go up

    hi, eps_hi = _upper_bracket(hi_start, eps, target, delta, q, steps, accountant)
    # PRV's sigma is typically 5-15 % below RDP's: a narrow first bracket saves evaluations.
    lo = hi * (0.8 if accountant == "prv" and hi < MAX_NOISE_MULTIPLIER else 0.5)
    while (eps_lo := eps(lo)) <= target:
        if lo <= MIN_NOISE_MULTIPLIER:
            raise ConfigError(
                f"target_epsilon={target:g}: even sigma={lo:.3g} spends only epsilon={eps_lo:.4g} "
                f"over {steps} steps at q={q:.4g}; a budget this large protects nothing. Choose "
                f"a smaller target_epsilon or set noise_multiplier directly")
        hi, eps_hi, lo = lo, eps_lo, lo / 2
    return _narrow(eps, target, (lo, eps_lo), (hi, eps_hi))


def _narrow(eps: Any, target: float, low: tuple[float, float],
            high: tuple[float, float]) -> float:
    """Shrink ``eps(lo) > target >= eps(hi)`` until ``eps(hi) >= target * (1 - rtol)``.

    log(epsilon) is close to linear in log(sigma), so each step interpolates there, aiming a
    little below the target, and is kept inside the middle 80 % of the bracket (which bounds
    the worst case like a bisection would).
    """
    (lo, eps_lo), (hi, eps_hi) = low, high
    aim = math.log(target * (1 - CALIBRATION_RTOL / 2))
    for _ in range(200):
        if eps_hi >= target * (1 - CALIBRATION_RTOL) or hi - lo <= 1e-9 * hi:
            break
        a, b = math.log(lo), math.log(hi)
        frac = 0.5
        if math.isfinite(eps_lo) and eps_hi > 0:
            frac = (math.log(eps_lo) - aim) / (math.log(eps_lo) - math.log(eps_hi))
        mid = math.exp(a + min(max(frac, 0.1), 0.9) * (b - a))
        eps_mid = eps(mid)
        if eps_mid <= target:
            hi, eps_hi = mid, eps_mid
        else:
            lo, eps_lo = mid, eps_mid
    return hi


def _rdp_sigma_or_max(target: float, delta: float, q: float, steps: int) -> float:
    """RDP's calibrated sigma (an upper bound for PRV's); the largest sigma when RDP's bound
    cannot reach ``target`` (PRV may still)."""
    try:
        return calibrate_noise_multiplier(target, delta, q, steps, "rdp")
    except ConfigError:
        return MAX_NOISE_MULTIPLIER


def _upper_bracket(sigma: float, eps: Any, target: float, delta: float, q: float, steps: int,
                   accountant: str) -> tuple[float, float]:
    """Double sigma until its epsilon is within target; ConfigError when no sigma gets there."""
    while (value := eps(sigma)) > target:
        if sigma >= MAX_NOISE_MULTIPLIER:
            raise ConfigError(
                f"target_epsilon={target:g} is out of reach: even sigma={sigma:g} spends "
                f"epsilon={value:.4g} over {steps} steps at q={q:.4g}, delta={delta:.3g} "
                f"({accountant}). Raise target_epsilon, use fewer rounds/local_epochs or a "
                f"larger batch_size" + (", or accountant='prv' (tighter)"
                                        if accountant == "rdp" else ""))
        sigma = min(2 * sigma, MAX_NOISE_MULTIPLIER)
    return sigma, value


# --------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class PrivacyPlan:
    """DP-SGD schedule of one site for a whole run, and the epsilon it spends."""

    sample_rate: float              # q accounted per step (Opacus: 1 / len(DPDataLoader))
    steps_per_round: int            # local_epochs x Poisson batches per epoch
    rounds: int
    total_steps: int                # rounds x steps_per_round: what sigma is calibrated for
    noise_multiplier: float         # sigma, given or calibrated
    target_epsilon: float | None    # None when sigma was given
    epsilon: float                  # whole-run epsilon at delta, with `accountant`
    delta: float
    max_grad_norm: float            # clipping norm C
    accountant: str
    batch_size: int
    n_train: int
    noise_std_per_coordinate: float  # sigma * C / expected_batch_size: noise of the mean gradient
    local_epochs: int
    expected_batch_size: int        # Opacus' int(n * q), the divisor of the summed gradient

    def epsilon_after(self, rounds_done: int) -> float:
        """Epsilon a site's ledger reports after ``rounds_done`` planned rounds."""
        steps = _int_arg("rounds_done", rounds_done, lo=0) * self.steps_per_round
        history = [(self.noise_multiplier, self.sample_rate, steps)] if steps else []
        return epsilon_of_history(history, self.delta, self.accountant)


def plan(n_train: int, batch_size: int, local_epochs: int, rounds: int, *,
         target_epsilon: float | None = None, noise_multiplier: float | None = None,
         delta: float | None = None, max_grad_norm: float = 1.0,
         accountant: str = "rdp") -> PrivacyPlan:
    """Plan DP-SGD for one site: give exactly one of ``target_epsilon`` (sigma is calibrated
    for the whole run) or ``noise_multiplier`` (its whole-run epsilon is computed).
    ``delta=None`` means :func:`default_delta`."""
    n = _int_arg("n_train", n_train)
    b = _int_arg("batch_size", batch_size)
    if b > n:
        raise ConfigError(f"batch_size={b} > n_train={n}: the site has fewer training samples "
                          f"than one batch; use batch_size <= {n}")
    epochs, rounds = _int_arg("local_epochs", local_epochs), _int_arg("rounds", rounds)
    clip = _positive("max_grad_norm", max_grad_norm)
    _check_accountant(accountant)
    if (target_epsilon is None) == (noise_multiplier is None):
        raise ConfigError(f"target_epsilon={target_epsilon!r}, noise_multiplier="
                          f"{noise_multiplier!r}: give exactly one of them (a budget to "
                          f"calibrate sigma for, or a fixed sigma)")
    delta = default_delta(n) if delta is None else _check_delta(delta, n)
    q, per_epoch = poisson_sampling(n, b)
    per_round = per_epoch * epochs
    total = per_round * rounds
    if noise_multiplier is None:
        target = _positive("target_epsilon", target_epsilon)
        sigma = calibrate_noise_multiplier(target, delta, q, total, accountant)
    else:
        target = None
        sigma = _positive("noise_multiplier", noise_multiplier, hi=MAX_NOISE_MULTIPLIER)
    eps = epsilon_of_history([(sigma, q, total)], delta, accountant)
    expected = int(n * q)
    return PrivacyPlan(sample_rate=q, steps_per_round=per_round, rounds=rounds, total_steps=total,
                       noise_multiplier=sigma, target_epsilon=target, epsilon=eps, delta=delta,
                       max_grad_norm=clip, accountant=accountant, batch_size=b, n_train=n,
                       noise_std_per_coordinate=sigma * clip / expected, local_epochs=epochs,
                       expected_batch_size=expected)


def plan_from_config(cfg: RunConfig, n_train: int) -> PrivacyPlan:
    """The DP-SGD plan of a site with ``n_train`` training samples under ``cfg`` (dp='sample').

    ``cfg.noise_multiplier == 0`` calibrates sigma for ``cfg.target_epsilon``; ``cfg.delta == 0``
    uses :func:`default_delta` of this site.
    """
    if cfg.dp != "sample":
        raise ConfigError(f"dp={cfg.dp!r}: a DP-SGD plan is for per-sample privacy, dp='sample'")
    fixed = cfg.noise_multiplier > 0
    return plan(n_train, cfg.batch_size, cfg.local_epochs, cfg.rounds,
                target_epsilon=None if fixed else cfg.target_epsilon,
                noise_multiplier=cfg.noise_multiplier if fixed else None,
                delta=cfg.delta if cfg.delta > 0 else None, max_grad_norm=cfg.max_grad_norm,
                accountant=cfg.accountant)


# --------------------------------------------------------------------------- ledger

class PrivacyLedger:
    """Cumulative privacy spent by one site across rounds (survives restarts via state_dict).

    Mirrors the interface of Opacus' accountants: a history of ``(sigma, q, steps)``, equal
    consecutive ``(sigma, q)`` merged, epsilon recomputed from the whole history on demand.
    """

    def __init__(self, accountant: str = "rdp") -> None:
        self._accountant = _check_accountant(accountant)
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
        self._history = _merged(self._history, _check_entry(noise_multiplier, sample_rate, steps))

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0.0 when nothing is recorded)."""
        return epsilon_of_history(self._history, delta, self._accountant)

    def epsilon_if(self, noise_multiplier: float, sample_rate: float, steps: int,
                   delta: float) -> float:
        """Epsilon after recording one more such round; the ledger is left unchanged."""
        entry = _check_entry(noise_multiplier, sample_rate, steps)
        return epsilon_of_history(_merged(self._history, entry), delta, self._accountant)

    def check_budget(self, budget: float, noise_multiplier: float, sample_rate: float,
                     steps: int, delta: float, site: int | str | None = None) -> float:
        """Epsilon after one more such round; BudgetExhausted when it would exceed ``budget``."""
        budget = _positive("target_epsilon", budget)
        after = self.epsilon_if(noise_multiplier, sample_rate, steps, delta)
        if after > budget:
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
            entries = _merged(entries, _check_entry(*entry))
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
