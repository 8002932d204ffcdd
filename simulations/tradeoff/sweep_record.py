"""sweep.json: the arguments a sweep started with, so a restart with other ones is refused instead
of mixing two experiments in one table."""

from __future__ import annotations

import json
from pathlib import Path

from common import rundir
from common.config import ConfigError
from simulations.tradeoff.spec import SweepSpec

SWEEP_FILE = "sweep.json"


def check_sweep_record(spec: SweepSpec) -> None:
    """Write sweep.json on the first start; on a restart, refuse arguments that differ."""
    path = spec.directory / SWEEP_FILE
    new = spec.record()
    if not path.exists():
        rundir.write_json(path, new)
        return
    try:
        old = _read_record(path)
    except ValueError as exc:
        raise ConfigError(f"{path}: unreadable sweep record ({exc}); delete the sweep folder or "
                          f"use another --sweep-name") from None
    diffs = _differences(old, new)
    if diffs:
        raise ConfigError(f"{path}: this sweep was started with other arguments: "
                          f"{'; '.join(diffs)}. Rerun with the recorded arguments to resume it, "
                          f"or use another --sweep-name for a new sweep")


def _read_record(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(data, dict) or not {"epsilons", "seeds", "options"} <= set(data):
        raise ValueError("expected keys epsilons, seeds, options")
    return data


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    for key in ("epsilons", "seeds"):
        if old.get(key) != new[key]:
            out.append(f"{key}: recorded {old.get(key)!r}, now {new[key]!r}")
    old_opts, new_opts = old.get("options", {}), new["options"]
    for key in sorted(set(old_opts) | set(new_opts)):
        if old_opts.get(key) != new_opts.get(key):
            out.append(f"{key}: recorded {old_opts.get(key, '(absent)')!r}, now "
                       f"{new_opts.get(key, '(absent)')!r}")
    return out
