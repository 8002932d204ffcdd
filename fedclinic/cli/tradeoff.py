"""`fedclinic tradeoff`: sweep the privacy budget; every run option plus the sweep's own."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from fedclinic.cli.options import add_debug, add_run_options, add_verbose, config_from_args
from simulations.tradeoff.spec import (DEFAULT_EPSILONS, DEFAULT_SEEDS, SWEPT, SweepSpec,
                                       default_sweep_name, parse_epsilons, parse_seeds)
from simulations.tradeoff.sweep import run_tradeoff


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "tradeoff", help="sweep the privacy budget epsilon: utility of federated, local and "
                         "pooled models under DP",
        description="Run `simulate` once per (epsilon, seed): the federation and the local and "
                    "pooled baselines, all trained with DP-SGD calibrated to the budget "
                    "(inf = no DP). Writes tradeoff.csv, tradeoff.md and tradeoff.png to "
                    "OUTPUT_DIR/SWEEP_NAME; rerunning the same command resumes a stopped sweep.")
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--epsilons", default=DEFAULT_EPSILONS, metavar="LIST",
                       help="comma-separated whole-run budgets per site; 'inf' = no DP "
                            f"(default: {DEFAULT_EPSILONS!r})")
    sweep.add_argument("--seeds", default=DEFAULT_SEEDS, metavar="N|LIST",
                       help="number of seeds, counted from --seed, or a comma-separated list of "
                            f"seeds (default: {DEFAULT_SEEDS}, i.e. seeds 0,1,2)")
    sweep.add_argument("--sweep-name", default=None, metavar="NAME",
                       help="folder under --output-dir holding the sweep (default: "
                            "tradeoff-DATASET-PARTITION-STRATEGY-MODEL)")
    options = parser.add_argument_group(
        "run options", "as for `fedclinic simulate`; dp, target_epsilon and noise_multiplier "
                       "are set by the sweep and --seed is the first seed")
    add_run_options(options, skip=SWEPT)
    add_verbose(parser, "show Flower's and Ray's own log lines")
    add_debug(parser)
    parser.set_defaults(func=run)


def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    base = config_from_args(args, skip=SWEPT)
    epsilons = parse_epsilons(args.epsilons)
    if (getattr(args, "loss", None) is None and base.loss == "weighted_ce"
            and any(not math.isinf(e) for e in epsilons)):
        # class weights from the private label counts are refused under DP-SGD; one loss for
        # every cell keeps the cells comparable (the recipe's logit-adjusted loss runs under
        # DP too, its prior the sites' noised class counts)
        base = base.replace(loss="ce")
        print("fedclinic: tradeoff: --loss ce in every cell (weighted_ce is refused under "
              "--dp sample; give --loss to choose)", file=sys.stderr)
    return SweepSpec(base=base, epsilons=epsilons,
                     seeds=parse_seeds(args.seeds, base.seed),
                     name=args.sweep_name or default_sweep_name(base))


def run(args: argparse.Namespace) -> int:
    """Bad input raises ConfigError (one line, exit 2)."""
    run_tradeoff(spec_from_args(args), verbose=args.verbose)
    return 0
