"""The live processes of this machine, read from Linux /proc (empty elsewhere).

Used to find a process's children and process groups without a third-party package: the
server's SuperLink wrapper reaps the groups its children lead, the loopback harness checks that a
killed site leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessEntry:
    pid: int
    ppid: int
    pgrp: int          # process group id


def process_table() -> list[ProcessEntry]:
    """Every live, non-zombie process (an empty list where /proc does not exist)."""
    table = []
    if not PROC.is_dir():
        return table
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()   # after "pid (comm) ": state ppid pgrp
        if fields[0] != "Z":
            table.append(ProcessEntry(int(entry.name), int(fields[1]), int(fields[2])))
    return table
