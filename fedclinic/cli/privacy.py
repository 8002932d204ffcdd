"""`fedclinic privacy plan`: what DP-SGD costs at each site, before a run starts."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from common.config import RunConfig
from fedclinic.cli.options import add_debug, add_run_options
from simulations.privacy_plan import DATA_OPTIONS, PLAN_OPTIONS, show_plan

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}
# The plan reads these fields its own way; their help says how.
SCHEDULE_HELP = {
    "batch_size": "mini-batch size B (expected Poisson batch) "
                  f"(default: {_DEFAULTS['batch_size']})",
    "local_epochs": f"local epochs per round (default: {_DEFAULTS['local_epochs']})",
    "delta": "DP delta; 0 = 1/(10 n) of each site (default: 0)",
    "max_grad_norm": f"per-sample clipping norm C (default: {_DEFAULTS['max_grad_norm']})",
    "accountant": "privacy accountant, also used to calibrate sigma [choices: rdp, prv] "
                  f"(default: {_DEFAULTS['accountant']!r})",
}
BUDGET_HELP = {
    "target_epsilon": "whole-run epsilon budget per site; sigma is calibrated to spend at most "
                      f"this (default: {_DEFAULTS['target_epsilon']} unless --noise-multiplier "
                      "is given)",
    "noise_multiplier": "fixed noise multiplier sigma; its whole-run epsilon is computed "
                        "(default: none, calibrated from --target-epsilon)",
}


def add_parser(sub: Any) -> None:
    """``privacy`` with its ``plan`` action."""
    privacy = sub.add_parser(
        "privacy", help="differential privacy: plan a DP-SGD budget before a run",
        description="Differential-privacy tools for DP-SGD at each site (dp='sample').")
    actions = privacy.add_subparsers(dest="privacy_command", required=True, metavar="ACTION")
    parser = actions.add_parser(
        "plan", help="sample rate, noise multiplier and epsilon of a planned run",
        description="Plan DP-SGD for a whole run: calibrate the noise multiplier for a target "
                    "epsilon (or take a fixed one), and show epsilon after each round. The "
                    "sampling schedule and accountant are those of Opacus' make_private.")
    size = parser.add_argument_group(
        "site size", "--n-train for one site, or the data options to plan every site of a "
                     "partition (as `fedclinic simulate` builds it)")
    size.add_argument("--n-train", default=None, metavar="N",
                      help="training samples at the site; replaces the data options "
                           "(default: each site's training split of the partition)")
    add_run_options(size, only=DATA_OPTIONS)
    schedule = parser.add_argument_group("training schedule and privacy")
    add_run_options(schedule, only=("batch_size", "local_epochs", "rounds"), helps=SCHEDULE_HELP)
    add_run_options(schedule.add_mutually_exclusive_group(), only=tuple(BUDGET_HELP),
                    helps=BUDGET_HELP)
    add_run_options(schedule, only=("delta", "max_grad_norm", "accountant"), helps=SCHEDULE_HELP)
    add_debug(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return show_plan({name: getattr(args, name) for name in PLAN_OPTIONS
                      if getattr(args, name, None) is not None})
