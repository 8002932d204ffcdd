"""The ``track`` setting: ``mlflow[:URI]`` and/or ``tensorboard[:DIR]``, comma-separated.

`common.config` validates every RunConfig's ``track`` with `parse_track`, so this module takes
ConfigError from there at call time (importing it at load time would be circular).
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("mlflow", "tensorboard")

TRACK_HELP = (
    "experiment tracking, comma-separated (or the flag repeated): mlflow[:URI] (default: a "
    "local store, sqlite OUTPUT_DIR/mlflow.db, artifacts in OUTPUT_DIR/mlartifacts; or any "
    "MLflow tracking URI, e.g. http://host:5000) and/or tensorboard[:DIR] (default: "
    "RUN_DIR/tensorboard; DIR/RUN_NAME when DIR is given); needs the fedclinic[mlflow] / "
    "fedclinic[tensorboard] extra; '' = off")


@dataclass(frozen=True)
class TrackTarget:
    """One tracker: its kind and where it writes ('' = its default place)."""

    kind: str
    where: str = ""


def parse_track(text: str) -> tuple[TrackTarget, ...]:
    """``"mlflow,tensorboard:/tmp/tb"`` -> (TrackTarget('mlflow'), TrackTarget('tensorboard',
    '/tmp/tb')). Only the first ':' of an item splits it, so a URI keeps its own."""
    from common.config import ConfigError

    targets: list[TrackTarget] = []
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        kind, _, where = item.partition(":")
        kind = kind.strip().lower()
        if kind not in KINDS:
            raise ConfigError(f"track={text!r}: unknown tracker {kind!r} in {item!r}; expected "
                              f"mlflow[:URI] or tensorboard[:DIR], comma-separated")
        if any(t.kind == kind for t in targets):
            raise ConfigError(f"track={text!r}: {kind} is given twice; give each tracker once")
        targets.append(TrackTarget(kind, where.strip()))
    return tuple(targets)
