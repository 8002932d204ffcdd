"""How a command's failure reaches the shell: one line for people, the traceback with --debug.

Exit codes: 2 for a configuration or data mistake (the message says which value), 130 when
interrupted, 1 for anything unexpected; a command's own code otherwise. An unexpected error
that escaped while an input file was read carries a note naming it
(`common.datasets.reading`); the line prints it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from common.config import ConfigError
from common.datasets import DataError
from common.datasets.reading import reading_note

USAGE_ERROR = 2
INTERRUPTED = 130
FAILED = 1


def run_command(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one command's adapter and map what it raises to an exit code."""
    try:
        return run(args)
    except (ConfigError, DataError) as exc:
        if args.debug:
            raise
        print(f"fedclinic: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("fedclinic: interrupted; completed rounds and checkpoints are kept in the run "
              "directory", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - one line for people, traceback with --debug
        if args.debug:
            raise
        where = reading_note(exc)
        print(f"fedclinic: error: {type(exc).__name__}: {exc} ({where + '; ' if where else ''}"
              f"rerun with --debug for the traceback)", file=sys.stderr)
        return FAILED
