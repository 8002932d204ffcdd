"""How a command's failure reaches the shell: one exit code from one table, one line for people,
the traceback with --debug.

* 0: done, or stopped on request (SIGTERM);
* 1: a runtime failure a restart may fix (the server went away, a run failed, a SuperNode died);
* 2: a configuration or credential error a restart will not fix (a bad flag, data or policy
  file, a port in use, a CA that does not verify the server, a key the server does not know):
  the systemd units say `RestartPreventExitStatus=2`;
* 130: interrupted (Ctrl-C).

`ConfigError` (and its kinds: `runtime.ports.PortInUse`, `client.activation.CredentialError`)
and `DataError` are exit 2; so is a TLS certificate that does not verify, wherever it is raised;
a command's own code otherwise. The check commands (`site validate`, `site doctor`, `site
status`) exit 1 when a check fails: they report, they are not restarted. An unexpected error
that escaped while an input file was read carries a note naming it (`common.datasets.reading`);
the line prints it. README "Exit codes" shows the same table.
"""

from __future__ import annotations

import argparse
import enum
import ssl
import sys
from collections.abc import Callable

from common.config import ConfigError
from common.datasets import DataError
from common.datasets.reading import reading_note


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1            # a runtime failure worth a restart
    CONFIG = 2            # a configuration or credential error a restart will not fix
    INTERRUPTED = 130


USAGE_ERROR = ExitCode.CONFIG
INTERRUPTED = ExitCode.INTERRUPTED
FAILED = ExitCode.FAILED


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
        if certificate_not_verified(exc):
            print(f"fedclinic: error: the server's TLS certificate does not verify against "
                  f"--ca-cert ({exc}); use the consortium's ca.crt", file=sys.stderr)
            return USAGE_ERROR
        where = reading_note(exc)
        print(f"fedclinic: error: {type(exc).__name__}: {exc} ({where + '; ' if where else ''}"
              f"rerun with --debug for the traceback)", file=sys.stderr)
        return FAILED


def certificate_not_verified(exc: BaseException) -> bool:
    """True if `exc` or an exception it came from is a TLS certificate verification failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError) or \
                "CERTIFICATE_VERIFY_FAILED" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False
