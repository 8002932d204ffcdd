"""Validation of the numbers the privacy code is given; each ConfigError names its parameter."""

from __future__ import annotations

import math
from typing import Any

from common.config import ACCOUNTANTS, ConfigError


def int_arg(name: str, value: Any, lo: int = 1) -> int:
    """``value`` if it is an integer >= ``lo`` (not a bool), else ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{name}={value!r}: expected an integer >= {lo}")
    return value


def positive(name: str, value: Any, hi: float = math.inf) -> float:
    """``value`` as a float if it is finite and in (0, hi], else ConfigError naming ``name``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0 < value <= hi:
        bound = f" and <= {hi:g}" if math.isfinite(hi) else ""
        raise ConfigError(f"{name}={value!r}: expected a finite number > 0{bound}")
    return float(value)


def check_accountant(accountant: Any) -> str:
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"accountant={accountant!r}: unknown; expected one of "
                          f"{', '.join(ACCOUNTANTS)}")
    return accountant


def check_delta(delta: Any) -> float:
    """``delta`` as a float if 0 < delta < 1 (the bound against n is the planner's)."""
    ok = isinstance(delta, (int, float)) and not isinstance(delta, bool)
    if not ok or not math.isfinite(delta) or not 0 < delta < 1:
        raise ConfigError(f"delta={delta!r}: expected 0 < delta < 1 (default: 1/(10 n))")
    return float(delta)


def check_entry(noise_multiplier: Any, sample_rate: Any, steps: Any) -> tuple[float, float, int]:
    """One DP-SGD history entry ``(sigma, q, steps)``, validated."""
    sigma = positive("noise_multiplier", noise_multiplier)
    q = positive("sample_rate", sample_rate, hi=1.0)
    return sigma, q, int_arg("steps", steps)
