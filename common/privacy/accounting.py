"""Epsilon of a DP-SGD history ``[(sigma, q, steps), ...]`` by Opacus' accountants.

PRV discretises the privacy-loss distribution on a grid that grows as sigma shrinks; a guarded
PRV accountant refuses, before allocating it, a grid larger than `PRV_MAX_GRID`.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Iterable, Sequence

from common.config import ConfigError
from common.privacy.checks import check_accountant, check_delta, check_entry

PRV_MAX_GRID = 5_000_000          # PRV discretisation points (~170 bytes each) we allow

History = Sequence[Sequence[float]]


class PRVTooLarge(ConfigError):
    """The PRV accountant would need more memory than we allow for this history."""


def merged(history: History, entry: tuple[float, float, int]) -> list[tuple[float, float, int]]:
    """``history`` plus ``entry``; equal consecutive (sigma, q) are merged, as Opacus does."""
    out = [(float(s), float(q), int(t)) for s, q, t in history]
    if out and out[-1][:2] == entry[:2]:
        out[-1] = (entry[0], entry[1], out[-1][2] + entry[2])
    else:
        out.append(entry)
    return out


def describe(entries: Iterable[tuple[float, float, int]]) -> str:
    return ", ".join(f"(sigma={s:.4g}, q={q:.4g}, steps={t})" for s, q, t in entries)


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
                raise PRVTooLarge(
                    f"accountant='prv' would need a {domain.size:,}-point grid (limit "
                    f"{PRV_MAX_GRID:,}) for {describe(self.history)}; use accountant='rdp' or "
                    f"more noise")
            return domain

    return GuardedPRVAccountant


def epsilon_of_history(history: History, delta: float, accountant: str) -> float:
    """Epsilon at ``delta`` of a DP-SGD history ``[(sigma, q, steps), ...]``, by Opacus.

    Builds a fresh Opacus accountant, sets its history and asks it (PRV: the upper bound with
    Opacus' default error settings, as ``PrivacyEngine.get_epsilon`` does). 0.0 for an empty
    history. Raises ConfigError when the PRV accountant cannot evaluate the history.
    """
    check_accountant(accountant)
    delta = check_delta(delta)
    entries = tuple(check_entry(*entry) for entry in history)
    return _epsilon(entries, delta, accountant) if entries else 0.0


@functools.lru_cache(maxsize=256)
def _epsilon(entries: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    """Opacus' epsilon for validated entries (deterministic, so cached: PRV costs ~1 s)."""
    from opacus.accountants import create_accountant

    if accountant == "rdp":
        return _rdp_epsilon(entries, delta)
    acc = (_guarded_prv_class()() if accountant == "prv"
           else create_accountant(mechanism=accountant))
    acc.history = list(entries)
    with warnings.catch_warnings():
        # RDP: "optimal order is the largest alpha" only says the bound could be tighter.
        warnings.filterwarnings("ignore", message="Optimal order")
        try:
            eps = float(acc.get_epsilon(delta=delta))
        except PRVTooLarge:
            raise
        except (ArithmeticError, ValueError, RuntimeError, MemoryError) as exc:
            raise ConfigError(f"accountant={accountant!r} failed for {describe(entries)} at "
                              f"delta={delta:.3g} ({type(exc).__name__}: {exc}); "
                              f"use accountant='rdp' or more noise") from None
    if math.isnan(eps):
        raise ConfigError(f"accountant={accountant!r} returned no epsilon for "
                          f"{describe(entries)}; use accountant='rdp' or more noise")
    return eps


def _rdp_epsilon(entries: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Opacus' RDPAccountant.get_epsilon for ``entries``: the same sums in the same order (so the
    same float), with each (q, sigma)'s per-step RDP computed once per process (~90 ms each)
    instead of once per call: a site's lifetime ledger of many runs is checked every round."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    rdp = sum([_rdp_per_step(q, sigma) * steps for sigma, q, steps in entries])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order")
        eps, _ = analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp,
                                            delta=delta)
    if math.isnan(eps):
        raise ConfigError(f"accountant='rdp' returned no epsilon for {describe(entries)}; "
                          f"use more noise")
    return float(eps)


@functools.lru_cache(maxsize=4096)
def _rdp_per_step(q: float, sigma: float) -> Any:
    """Opacus' RDP of one step at sampling rate ``q`` and noise ``sigma``, per order."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    return analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1,
                                orders=RDPAccountant.DEFAULT_ALPHAS)
