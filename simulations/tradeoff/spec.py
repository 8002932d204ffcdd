"""What a sweep is: the budgets and seeds crossed (parsed from the command line), the base run
options, and the config and folder of each (epsilon, seed) cell."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import ConfigError, RunConfig
from common.seg_data import check_task_model

DEFAULT_EPSILONS = "inf,16,8,4,2,1"
DEFAULT_SEEDS = "3"
SWEPT = ("dp", "target_epsilon", "noise_multiplier")   # set per cell, not by flags
_EPS_LO = 0.01          # RunConfig.target_epsilon's range
_EPS_HI = 1e6
MAX_SEEDS = 1000        # a sweep of more seeds is a typo, not a plan
_SEED_MAX = 2**31 - 1    # RunConfig.seed's range


def parse_epsilons(text: str) -> tuple[float, ...]:
    """``"inf,16,8"`` -> (inf, 16.0, 8.0); ``inf`` means no DP. Rejects <= 0, junk, duplicates."""
    values: list[float] = []
    for raw in (part.strip() for part in str(text).split(",")):
        value = _epsilon(raw, text)
        if value in values:
            raise ConfigError(f"epsilons={text!r}: {raw!r} is listed twice; give each budget once")
        values.append(value)
    return tuple(values)


def _epsilon(raw: str, text: str) -> float:
    """One budget of the list ``text``: 'inf' or a number in RunConfig.target_epsilon's range."""
    if raw.lower() in ("inf", "infinity"):
        return math.inf
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and _EPS_LO <= value <= _EPS_HI):
        raise ConfigError(f"epsilons={text!r}: {raw!r} is not a privacy budget; expected "
                          f"'inf' (no DP) or a number {_EPS_LO} <= epsilon <= {_EPS_HI:g},"
                          f" comma-separated, e.g. {DEFAULT_EPSILONS!r}")
    return value


def parse_seeds(text: str, first: int = 0) -> tuple[int, ...]:
    """``"3"`` -> 3 seeds from ``first`` on; ``"0,5,9"`` -> exactly those seeds."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if not numbers or any(n < 0 for n in numbers):
        raise ConfigError(f"seeds={text!r}: expected a number of seeds N >= 1 (seeds --seed .. "
                          f"--seed+N-1) or a comma-separated list of seeds >= 0, e.g. '3' or "
                          f"'0,5,9'")
    if len(parts) == 1:
        if not 1 <= numbers[0] <= MAX_SEEDS:
            raise ConfigError(f"seeds={text!r}: expected 1 to {MAX_SEEDS} seeds")
        if first + numbers[0] - 1 > _SEED_MAX:
            raise ConfigError(f"seeds={text!r}: seeds {first}..{first + numbers[0] - 1} go past "
                              f"the largest seed {_SEED_MAX}; give fewer seeds or a lower --seed")
        return tuple(range(first, first + numbers[0]))
    if len(set(numbers)) != len(numbers):
        raise ConfigError(f"seeds={text!r}: a seed is listed twice; give each seed once")
    return tuple(numbers)


def epsilon_label(epsilon: float) -> str:
    """'inf', '4', '0.5': used in folder names, the CSV and sweep.json."""
    return "inf" if math.isinf(epsilon) else f"{epsilon:.10g}"


def default_sweep_name(cfg: RunConfig) -> str:
    data = Path(cfg.data_path).stem if cfg.dataset == "medmnist" else cfg.dataset
    name = f"tradeoff-{data}-{cfg.partition}-{cfg.strategy}-{cfg.model}"
    return name.replace(":", "").replace("+", "_").replace("/", "_")


def cell_name(epsilon: float, seed: int) -> str:
    return f"eps{epsilon_label(epsilon)}-seed{seed}"


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: base run options, the budgets and seeds crossed, and the sweep folder's name."""

    base: RunConfig
    epsilons: tuple[float, ...]
    seeds: tuple[int, ...]
    name: str

    def __post_init__(self) -> None:
        if not self.name or self.name in (".", "..") or any(c in self.name for c in "/\\:+"):
            raise ConfigError(f"sweep_name={self.name!r}: expected a plain folder name (no '/', "
                              f"'\\', ':', '+')")
        if not self.epsilons or not self.seeds:
            raise ConfigError("a sweep needs at least one epsilon and one seed")
        if self.base.data_path and Path(self.base.data_path).exists():
            # absolute, as simulate() records it in each cell: a finished cell is recognised
            # again whatever folder the sweep is resumed from
            absolute = str(Path(self.base.data_path).resolve())
            object.__setattr__(self, "base", self.base.replace(data_path=absolute))
        check_task_model(self.base)        # e.g. a classifier with task=segmentation
        for cell in self.cells():          # validates every cell's config before any work
            self.config(*cell)

    @property
    def directory(self) -> Path:
        return Path(self.base.output_dir) / self.name

    def cells(self) -> list[tuple[float, int]]:
        return [(eps, seed) for eps in self.epsilons for seed in self.seeds]

    def config(self, epsilon: float, seed: int) -> RunConfig:
        """The cell's run: DP off for inf, else DP-SGD calibrated to spend ``epsilon``."""
        common = dict(seed=seed, noise_multiplier=0.0, output_dir=str(self.directory))
        if math.isinf(epsilon):
            return self.base.replace(dp="off", **common)
        return self.base.replace(dp="sample", target_epsilon=float(epsilon), **common)

    def cell_dir(self, epsilon: float, seed: int) -> Path:
        return self.directory / cell_name(epsilon, seed)

    def record(self) -> dict[str, Any]:
        """What sweep.json stores; equal records mean the same experiment."""
        options = {k: v for k, v in self.base.to_dict().items()
                   if k not in (*SWEPT, "seed", "output_dir", "track")}
        return {"epsilons": [epsilon_label(e) for e in self.epsilons], "seeds": list(self.seeds),
                "options": options}
