"""What a deployed ServerApp tells the `fedclinic server` that runs it, through two files in the
server's state folder (the ServerApp is Flower's `flwr-serverapp`, a process the server did not
start itself, so files are the channel; both paths come in the environment):

* `$FEDCLINIC_EVENTS_FILE` (`STATE/run-events.jsonl`): one JSON line per run event the ServerApp
  sees (run started or resumed under its run name, a site's policy or budget refusal, run
  finished or stopped), appended; the server prints one line per event (server/events.py);
* `$FEDCLINIC_SITE_NAMES` (`STATE/site-names.json`): node id -> the site's registered name (the
  stem of its key file in site-keys/), written by the server, read here so that rounds, logs and
  reports name sites ("site-2") instead of node ids.

Simulation sets neither: `emit` does nothing and sites keep their numbers.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

EVENTS_ENV = "FEDCLINIC_EVENTS_FILE"
SITE_NAMES_ENV = "FEDCLINIC_SITE_NAMES"
EVENTS_FILE = "run-events.jsonl"
SITE_NAMES_FILE = "site-names.json"


_RUN: dict[str, object] = {}      # the run this ServerApp process serves (`bind`)


def bind(run_id: int, run_name: str) -> None:
    """The Flower run id and fedclinic run name that every later event carries."""
    _RUN.clear()
    _RUN.update(run_id=run_id, run_name=run_name)


def emit(event: str, **fields: object) -> None:
    """Append one event line (time, event, the bound run, fields) to the server's events file,
    if any."""
    path = os.environ.get(EVENTS_ENV)
    if not path:
        return
    line = json.dumps({"time": time.time(), "event": event, **_RUN, **fields}, default=str)
    try:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")
    except OSError:
        pass                      # the server's console is a convenience, never a failure


def outcome(stopped: str, cfg) -> str:
    """How a run that returned ended, in words."""
    rounds = f"{cfg.rounds} round{'' if cfg.rounds == 1 else 's'}"
    return f"stopped early: {stopped}" if stopped else f"completed, {rounds}"


def site_registry() -> dict[int, tuple[str, str]]:
    """node id -> (registered site name, status: registered/online/offline/unregistered), as
    the server last wrote them ({} if none)."""
    path = os.environ.get(SITE_NAMES_ENV)
    if not path:
        return {}
    try:
        raw = json.loads(Path(path).read_text())
        return {int(k): (str(v["name"]), str(v.get("status", ""))) if isinstance(v, dict)
                else (str(v), "") for k, v in raw.items()}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}


def site_names() -> dict[int, str]:
    """node id -> registered site name ({} if none)."""
    return {node: name for node, (name, _) in site_registry().items()}


def write_site_names(path: Path, names: dict[int, str], status: dict[int, str]) -> None:
    """The server's side: node id -> name and status, replaced atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({str(k): {"name": v, "status": status.get(k, "")}
                               for k, v in sorted(names.items())}, indent=1))
    os.replace(tmp, path)


# ------------------------------------------------------------------ the run's parts (report)

PARTS_FILE = "parts.json"          # RUN_DIR/parts.json: every start of the run's ServerApp
GLOBAL_TEST_ENV = "FEDCLINIC_GLOBAL_TEST"   # `fedclinic server --global-test PATH`
MANIFESTS_ENV = "FEDCLINIC_MANIFESTS"       # `fedclinic server --manifests DIR`


def deployed() -> bool:
    """True in a ServerApp that `fedclinic server` runs (not in a simulation)."""
    return EVENTS_ENV in os.environ


def _parts(run_dir: Path) -> list[dict]:
    try:
        return list(json.loads((run_dir / PARTS_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return []


def _write_parts(run_dir: Path, parts: list[dict]) -> None:
    tmp = run_dir / (PARTS_FILE + ".tmp")
    tmp.write_text(json.dumps(parts, indent=1))
    os.replace(tmp, run_dir / PARTS_FILE)


def part_started(run_dir: Path, first_round: int, resumed: bool) -> None:
    now = time.time()
    parts = _parts(run_dir)
    parts.append({"started_at": now, "first_round": first_round, "last_round": first_round - 1,
                  "updated_at": now, "resumed": resumed})
    _write_parts(run_dir, parts)


def part_progress(run_dir: Path, server_round: int) -> None:
    parts = _parts(run_dir)
    if parts and server_round >= 1:
        parts[-1].update(last_round=server_round, updated_at=time.time())
        _write_parts(run_dir, parts)


def part_finished(run_dir: Path, how: str) -> None:
    parts = _parts(run_dir)
    if parts:
        parts[-1].update(ended_at=time.time(), outcome=how)
        _write_parts(run_dir, parts)


def deployment(run_dir: Path, sites_of_nodes: dict[int, int]):
    """The report's `Deployment` of this run: site numbers -> names, the manifests the server
    was given, the global test set, the parts so far."""
    from common.report.deployment import Deployment, RunPart

    names = site_names()
    sites = {str(site): names.get(node, f"site {site}") for node, site in sites_of_nodes.items()}
    declared: dict[str, dict] = {}
    folder = os.environ.get(MANIFESTS_ENV)
    if folder:
        for path in sorted(Path(folder).glob("*.json")):
            name = path.name.removesuffix(".manifest.json").removesuffix(".json")
            try:
                declared[name] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
    parts = tuple(RunPart(**{k: v for k, v in p.items() if k in RunPart.__dataclass_fields__})
                  for p in _parts(run_dir))
    return Deployment(sites=sites, declared=declared,
                      global_test=os.environ.get(GLOBAL_TEST_ENV, ""), parts=parts)
