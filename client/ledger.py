"""Where a site keeps its privacy ledger: Flower's Context.state (survives rounds of one run, also
in simulation) and, when the operator names a file (`ledger-path` node config), that file, which
survives restarts and later runs. The file is authoritative when present: a restarted site resumes
its ledger, never a fresh one."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ConfigRecord, Context

from common import rundir
from common.config import ConfigError
from common.privacy.ledger import PrivacyLedger

STATE_KEY = "fedclinic-privacy-ledger"
LEDGER_PATH = "ledger-path"   # node config: one ledger file for everything this site trains
LEDGER_DIR = "ledger-dir"     # node config: one ledger file per fedclinic run (`fedclinic site`)


def ledger_file(context: Context, run_key: str = "") -> Path | None:
    """Where this site's ledger lives on disk: `ledger-dir`/<run>.json (a resumed run finds its
    ledger again), else `ledger-path`, else nowhere (Context.state only)."""
    directory = context.node_config.get(LEDGER_DIR)
    if directory:
        if not run_key:
            raise ConfigError("the server sent no run key, so this site cannot tell which "
                              "privacy ledger to charge; refusing to train")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_key)
        return Path(str(directory)) / f"{safe}.json"
    path = context.node_config.get(LEDGER_PATH)
    return Path(str(path)) if path else None


def load_ledger(context: Context, accountant: str, run_key: str = "") -> PrivacyLedger:
    path = ledger_file(context, run_key)
    state = None
    if path and Path(str(path)).exists():
        try:
            state = json.loads(Path(str(path)).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: privacy ledger unreadable ({exc}); refusing to train "
                              "rather than start a fresh ledger") from None
    elif STATE_KEY in context.state:
        state = json.loads(str(context.state[STATE_KEY]["json"]))
    if state is None:
        return PrivacyLedger(accountant)
    ledger = PrivacyLedger.from_state(state)
    if ledger.accountant != accountant:
        raise ConfigError(f"privacy ledger uses accountant {ledger.accountant!r} but the run asks "
                          f"for {accountant!r}; one site's ledger must keep one accountant")
    return ledger


def save_ledger(context: Context, ledger: PrivacyLedger, run_key: str = "") -> None:
    text = json.dumps(ledger.state_dict())
    context.state[STATE_KEY] = ConfigRecord({"json": text})
    path = ledger_file(context, run_key)
    if path:
        rundir.atomic_write_bytes(Path(str(path)), (text + "\n").encode())
