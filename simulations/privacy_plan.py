"""`fedclinic privacy plan`: what DP-SGD costs at each site, before a run starts.

For one site size (``--n-train``) or for every site of a partition (the data options, read
exactly as `fedclinic simulate` partitions them), prints the Poisson sample rate, the steps per
round and in total, the noise multiplier (given, or calibrated for the whole run), the whole-run
epsilon, the noise on the averaged gradient, and epsilon after each round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from common.config import ConfigError, RunConfig
from common.privacy.planner import PrivacyPlan, given_delta, plan

DATA_OPTIONS = ("dataset", "data_path", "image_size", "spatial_dims", "num_samples", "sites",
                "partition", "val_fraction", "test_fraction", "seed")
SCHEDULE_OPTIONS = ("batch_size", "local_epochs", "rounds", "target_epsilon", "noise_multiplier",
                    "delta", "max_grad_norm", "accountant")
PLAN_OPTIONS = ("n_train", *DATA_OPTIONS, *SCHEDULE_OPTIONS)   # what `show_plan` reads
CURVE_POINTS = 10
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}


Options = Mapping[str, Any]
"""The options given, by RunConfig field name (plus ``n_train``), as text or numbers; an option
not given is absent (or None)."""


def _value(options: Options, name: str, kind: type) -> Any:
    """The option's value converted to ``kind`` (RunConfig's default when not given)."""
    raw = options.get(name)
    if raw is None:
        return _DEFAULTS[name]
    try:
        if kind is int and float(raw) != int(float(raw)):
            raise ValueError
        return int(float(raw)) if kind is int else kind(raw)
    except (TypeError, ValueError):
        flag = "--" + name.replace("_", "-")
        raise ConfigError(f"{flag}={raw!r}: expected {'an integer' if kind is int else 'a number'}"
                          ) from None


def site_sizes(options: Options) -> list[tuple[str, int]]:
    """(column label, training samples) per site: --n-train, or the partition's sites."""
    given = {name: options[name] for name in DATA_OPTIONS if options.get(name) is not None}
    if options.get("n_train") is not None:
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ConfigError(f"--n-train={options['n_train']!r} replaces the data options; "
                              f"drop {flags} or drop --n-train")
        return [("site", _value(options, "n_train", int))]
    from common.partitions.loader import load_federation

    fed = load_federation(RunConfig.from_dict(given))
    return [(f"site {s.site}", len(s.train)) for s in fed.sites]


def _plans(options: Options, sizes: list[tuple[str, int]]) -> list[PrivacyPlan]:
    given_sigma = options.get("noise_multiplier") is not None
    sigma = _value(options, "noise_multiplier", float) if given_sigma else None
    target = None if sigma is not None else _value(options, "target_epsilon", float)
    delta = _value(options, "delta", float)
    by_n: dict[int, PrivacyPlan] = {}
    for _, n in sizes:
        if n not in by_n:
            by_n[n] = plan(n, _value(options, "batch_size", int),
                           _value(options, "local_epochs", int), _value(options, "rounds", int),
                           target_epsilon=target, noise_multiplier=sigma,
                           delta=given_delta(delta),
                           max_grad_norm=_value(options, "max_grad_norm", float),
                           accountant=options.get("accountant") or _DEFAULTS["accountant"])
    return [by_n[n] for _, n in sizes]


def curve_rounds(rounds: int) -> list[int]:
    """Every round up to CURVE_POINTS rounds, else CURVE_POINTS evenly spaced ones (1 and last)."""
    if rounds <= CURVE_POINTS:
        return list(range(1, rounds + 1))
    step = (rounds - 1) / (CURVE_POINTS - 1)
    return [1 + round(i * step) for i in range(CURVE_POINTS)]


def _table(rows: list[tuple[str, list[str]]], labels: list[str]) -> list[str]:
    width = max(len(name) for name, _ in rows)
    cols = [max(len(label), *(len(cells[i]) for _, cells in rows))
            for i, label in enumerate(labels)]
    head = " " * width + "".join(f"  {label:>{w}}" for label, w in zip(labels, cols))
    return [head] + [f"{name:<{width}}" + "".join(f"  {c:>{w}}" for c, w in zip(cells, cols))
                     for name, cells in rows]


def format_plans(sizes: list[tuple[str, int]], plans: list[PrivacyPlan]) -> str:
    """The plan table, the calibration lines and the epsilon-per-round curve."""
    first = plans[0]
    how = "calibrated" if first.target_epsilon is not None else "given"
    rows = [
        ("training samples n", [str(p.n_train) for p in plans]),
        ("batch size B (expected Poisson batch)",
         [f"{p.batch_size} ({p.expected_batch_size})" for p in plans]),
        ("sample rate q", [f"{p.sample_rate:.4g}" for p in plans]),
        (f"steps per round ({first.local_epochs} local epochs)",
         [str(p.steps_per_round) for p in plans]),
        (f"total steps ({first.rounds} rounds)", [str(p.total_steps) for p in plans]),
        (f"noise multiplier sigma ({how})", [f"{p.noise_multiplier:.4g}" for p in plans]),
        ("clipping norm C", [f"{p.max_grad_norm:g}" for p in plans]),
        ("delta", [f"{p.delta:.3g}" for p in plans]),
        ("epsilon, whole run", [f"{p.epsilon:.4g}" for p in plans]),
        ("noise std on averaged gradient", [f"{p.noise_std_per_coordinate:.4g}" for p in plans]),
    ]
    labels = [label for label, _ in sizes]
    lines = [f"DP-SGD privacy plan ({first.accountant} accountant; Poisson sampling and "
             f"accounting as Opacus' make_private)", ""]
    lines += _table(rows, labels) + [""]
    for label, p in zip(labels, plans):
        bound = (f" <= target {p.target_epsilon:g}" if p.target_epsilon is not None else "")
        lines.append(f"{label}: sigma = {p.noise_multiplier:.4g} gives epsilon = "
                     f"{p.epsilon:.4g}{bound} (delta = {p.delta:.3g}, {p.total_steps} steps)")
    lines += ["", "epsilon after round"]
    points = curve_rounds(first.rounds)
    curve = [(f"round {r}", [f"{p.epsilon_after(r):.4g}" for p in plans]) for r in points]
    lines += _table(curve, labels)
    return "\n".join(lines)


def show_plan(options: Options) -> int:
    """Body of `fedclinic privacy plan`; bad input raises ConfigError (one line in the CLI)."""
    sizes = site_sizes(options)
    print(format_plans(sizes, _plans(options, sizes)))
    return 0
