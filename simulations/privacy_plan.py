"""`fedclinic privacy plan`: what DP-SGD costs at each site, before a run starts.

For one site size (``--n-train``) or for every site of a partition (the data options, read
exactly as `fedclinic simulate` partitions them), prints the Poisson sample rate, the steps per
round and in total, the noise multiplier (given, or calibrated for the whole run), the whole-run
epsilon, the noise on the averaged gradient, and epsilon after each round.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from common.config import ACCOUNTANTS, ConfigError, RunConfig, describe_fields
from common.privacy import PrivacyPlan, plan

DATA_OPTIONS = ("dataset", "data_path", "image_size", "spatial_dims", "num_samples", "sites",
                "partition", "val_fraction", "test_fraction", "seed")
CURVE_POINTS = 10
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}


def add_parser(subparsers: Any) -> None:
    """Add ``privacy`` with its ``plan`` action to the CLI's subparsers."""
    privacy = subparsers.add_parser(
        "privacy", help="differential privacy: plan a DP-SGD budget before a run",
        description="Differential-privacy tools for DP-SGD at each site (dp='sample').")
    actions = privacy.add_subparsers(dest="privacy_command", required=True, metavar="ACTION")
    parser = actions.add_parser(
        "plan", help="sample rate, noise multiplier and epsilon of a planned run",
        description="Plan DP-SGD for a whole run: calibrate the noise multiplier for a target "
                    "epsilon (or take a fixed one), and show epsilon after each round. The "
                    "sampling schedule and accountant are those of Opacus' make_private.")
    _add_size_options(parser)
    _add_schedule_options(parser)
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks on errors (default: off)")


def _add_size_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "site size", "--n-train for one site, or the data options to plan every site of a "
                     "partition (as `fedclinic simulate` builds it)")
    group.add_argument("--n-train", default=None, metavar="INT",
                       help="training samples at the site; replaces the data options "
                            "(default: each site's training split of the partition)")
    for name, default, help_text, choices in describe_fields():
        if name in DATA_OPTIONS:
            extra = f" [choices: {', '.join(map(str, choices))}]" if choices else ""
            shown = repr(default) if isinstance(default, str) else default
            group.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                               metavar=type(default).__name__.upper(),
                               help=f"{help_text}{extra} (default: {shown})")


def _add_schedule_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training schedule and privacy")
    for name, kind, text in (("batch_size", "INT", "mini-batch size B (expected Poisson batch)"),
                             ("local_epochs", "INT", "local epochs per round"),
                             ("rounds", "INT", "federated rounds")):
        group.add_argument("--" + name.replace("_", "-"), dest=name, default=None, metavar=kind,
                           help=f"{text} (default: {_DEFAULTS[name]})")
    budget = group.add_mutually_exclusive_group()
    budget.add_argument("--target-epsilon", default=None, metavar="FLOAT",
                        help="whole-run epsilon budget per site; sigma is calibrated to spend at "
                             "most this (default: "
                             f"{_DEFAULTS['target_epsilon']} unless --noise-multiplier is given)")
    budget.add_argument("--noise-multiplier", default=None, metavar="FLOAT",
                        help="fixed noise multiplier sigma; its whole-run epsilon is computed "
                             "(default: none, calibrated from --target-epsilon)")
    group.add_argument("--delta", default=None, metavar="FLOAT",
                       help="DP delta; 0 = 1/(10 n) of each site (default: 0)")
    group.add_argument("--max-grad-norm", default=None, metavar="FLOAT",
                       help=f"per-sample clipping norm C (default: {_DEFAULTS['max_grad_norm']})")
    group.add_argument("--accountant", default=None, choices=ACCOUNTANTS,
                       help=f"privacy accountant, also used to calibrate sigma [choices: "
                            f"{', '.join(ACCOUNTANTS)}] (default: '{_DEFAULTS['accountant']}')")


def _value(args: argparse.Namespace, name: str, kind: type) -> Any:
    """The option's value converted to ``kind`` (RunConfig's default when not given)."""
    raw = getattr(args, name, None)
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


def site_sizes(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(column label, training samples) per site: --n-train, or the partition's sites."""
    given = {name: getattr(args, name) for name in DATA_OPTIONS
             if getattr(args, name, None) is not None}
    if getattr(args, "n_train", None) is not None:
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ConfigError(f"--n-train={args.n_train!r} replaces the data options; drop "
                              f"{flags} or drop --n-train")
        return [("site", _value(args, "n_train", int))]
    from simulations.partition import load_federation

    fed = load_federation(RunConfig.from_dict(given))
    return [(f"site {s.site}", len(s.train)) for s in fed.sites]


def _plans(args: argparse.Namespace, sizes: list[tuple[str, int]]) -> list[PrivacyPlan]:
    sigma = _value(args, "noise_multiplier", float) if args.noise_multiplier is not None else None
    target = None if sigma is not None else _value(args, "target_epsilon", float)
    delta = _value(args, "delta", float)
    by_n: dict[int, PrivacyPlan] = {}
    for _, n in sizes:
        if n not in by_n:
            by_n[n] = plan(n, _value(args, "batch_size", int), _value(args, "local_epochs", int),
                           _value(args, "rounds", int), target_epsilon=target,
                           noise_multiplier=sigma, delta=None if delta == 0 else delta,
                           max_grad_norm=_value(args, "max_grad_norm", float),
                           accountant=args.accountant or _DEFAULTS["accountant"])
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


def run(args: argparse.Namespace) -> int:
    """Body of `fedclinic privacy plan`; bad input raises ConfigError (one line in the CLI)."""
    sizes = site_sizes(args)
    print(format_plans(sizes, _plans(args, sizes)))
    return 0
