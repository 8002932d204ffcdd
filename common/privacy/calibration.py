"""The one noise calibrator: the smallest noise multiplier whose epsilon stays within a budget.

`calibrate_sigma` searches any decreasing epsilon-of-sigma function (sample-level DP-SGD with
Opacus' accountants, client-level DP with Flower's); `calibrate_noise_multiplier` is the DP-SGD
use of it.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from common.config import ConfigError
from common.privacy.accounting import PRVTooLarge, describe, epsilon_of_history
from common.privacy.checks import check_accountant, check_delta, check_entry, positive

MAX_NOISE_MULTIPLIER = 1e4        # RunConfig.noise_multiplier's upper bound
MIN_NOISE_MULTIPLIER = 1e-2       # calibration does not search below this sigma
CALIBRATION_RTOL = 0.005          # calibrated epsilon lies in [target * (1 - rtol), target]

EpsilonOfSigma = Callable[[float], float]


def calibrate_sigma(epsilon_of: EpsilonOfSigma, target: float, *, spent_over: str,
                    advice: str, start: float = 1.0, narrow_first: bool = False) -> float:
    """Smallest sigma (to within CALIBRATION_RTOL in epsilon) with ``epsilon_of(sigma) <=
    target``; ``epsilon_of`` must decrease as sigma grows.

    A bracketing search: sigma doubles from ``start`` until epsilon is within ``target``, halves
    until it is not, then `_narrow` closes in. The returned sigma always satisfies the target.
    ConfigError when even `MAX_NOISE_MULTIPLIER` overspends (``advice`` says what to change) or
    when even `MIN_NOISE_MULTIPLIER` stays within target (a budget that protects nothing).
    ``spent_over`` describes the run in those messages (e.g. "over 630 steps at q=0.0159");
    ``narrow_first`` starts the lower bracket at 0.8 x sigma instead of 0.5 x.
    """
    hi, eps_hi = _upper_bracket(start, epsilon_of, target, spent_over, advice)
    lo = hi * (0.8 if narrow_first and hi < MAX_NOISE_MULTIPLIER else 0.5)
    while (eps_lo := epsilon_of(lo)) <= target:
        if lo <= MIN_NOISE_MULTIPLIER:
            raise ConfigError(
                f"target_epsilon={target:g}: even sigma={lo:.3g} spends only epsilon={eps_lo:.4g} "
                f"{spent_over}; a budget this large protects nothing. Choose a smaller "
                f"target_epsilon or set noise_multiplier directly")
        hi, eps_hi, lo = lo, eps_lo, lo / 2
    return _narrow(epsilon_of, target, (lo, eps_lo), (hi, eps_hi))


def calibrate_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float,
                               steps: int, accountant: str = "rdp",
                               extra: Sequence[Sequence[float]] = ()) -> float:
    """Smallest sigma (to within CALIBRATION_RTOL in epsilon) whose ``steps``-step DP-SGD run at
    ``sample_rate``, composed with the fixed mechanisms ``extra`` (``(sigma, q, steps)`` entries,
    e.g. a site's Gaussian count and metric releases, `common.privacy.mechanisms`), spends at
    most ``target_epsilon`` at ``delta`` with ``accountant``.

    PRV starts from the (cheap) RDP sigma, an upper bound for it as PRV is the tighter
    accountant; PRV's sigma is typically 5-15 % below RDP's, so a narrow first bracket saves
    evaluations.
    """
    target = positive("target_epsilon", target_epsilon)
    delta = check_delta(delta)
    q, steps = check_entry(1.0, sample_rate, steps)[1:]
    check_accountant(accountant)
    fixed = tuple(check_entry(*entry) for entry in extra)
    _check_extra_fits(fixed, target, delta, accountant)

    hi_start = (_rdp_sigma_or_max(target, delta, q, steps, fixed) if accountant == "prv"
                else 1.0)

    def eps(sigma: float) -> float:
        try:
            return epsilon_of_history([(sigma, q, steps), *fixed], delta, accountant)
        except PRVTooLarge:
            if sigma >= hi_start:
                raise
            return math.inf   # grids explode at small sigma, where epsilon is large: go up

    advice = ("Raise target_epsilon, use fewer rounds/local_epochs or a larger batch_size"
              + (", or accountant='prv' (tighter)" if accountant == "rdp" else ""))
    plus = f" plus {describe(fixed)}" if fixed else ""
    return calibrate_sigma(eps, target, spent_over=f"over {steps} steps at q={q:.4g}{plus}, "
                           f"delta={delta:.3g} ({accountant})", advice=advice, start=hi_start,
                           narrow_first=accountant == "prv")


def _narrow(eps: EpsilonOfSigma, target: float, low: tuple[float, float],
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


def _check_extra_fits(extra: tuple[tuple[float, float, int], ...], target: float,
                      delta: float, accountant: str) -> None:
    """ConfigError when the fixed mechanisms alone spend the whole target: no sigma helps."""
    if not extra:
        return
    alone = epsilon_of_history(extra, delta, accountant)
    if alone >= target:
        raise ConfigError(f"target_epsilon={target:g} is out of reach: the fixed releases "
                          f"{describe(extra)} alone spend epsilon={alone:.4g} at "
                          f"delta={delta:.3g} ({accountant}); raise target_epsilon or the "
                          f"releases' noise (count_noise_multiplier, metric_noise_multiplier), "
                          f"or release fewer values")


def _rdp_sigma_or_max(target: float, delta: float, q: float, steps: int,
                      extra: tuple[tuple[float, float, int], ...] = ()) -> float:
    """RDP's calibrated sigma (an upper bound for PRV's); the largest sigma when RDP's bound
    cannot reach ``target`` (PRV may still)."""
    try:
        return calibrate_noise_multiplier(target, delta, q, steps, "rdp", extra)
    except ConfigError:
        return MAX_NOISE_MULTIPLIER


def _upper_bracket(sigma: float, eps: EpsilonOfSigma, target: float, spent_over: str,
                   advice: str) -> tuple[float, float]:
    """Double sigma until its epsilon is within target; ConfigError when no sigma gets there."""
    while (value := eps(sigma)) > target:
        if sigma >= MAX_NOISE_MULTIPLIER:
            raise ConfigError(
                f"target_epsilon={target:g} is out of reach: even sigma={sigma:g} spends "
                f"epsilon={value:.4g} {spent_over}. {advice}")
        sigma = min(2 * sigma, MAX_NOISE_MULTIPLIER)
    return sigma, value
