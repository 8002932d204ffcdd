"""Resumable checkpoints: everything a run needs to continue after the server dies.

`checkpoints/latest.pt` is replaced atomically after every completed round and holds the global
weights, the round number, the strategy's own state (e.g. FedAdam's moments, client-level DP's
accountant), the server's random-number generators, and the run-level privacy ledger. A resumed run
reads it, drops lines of `metrics.jsonl` written after it (a crash between the two writes), and
continues with the next round number.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import rundir
from common.config import ConfigError

# Attributes that hold a Flower strategy's learned state between rounds (FedOpt family: the
# current global arrays and the first/second moments).
STRATEGY_STATE_ATTRS = ("current_arrays", "m_t", "v_t")


def _layers(strategy: Any) -> list[Any]:
    """The strategy and every strategy it wraps (RecordingStrategy -> DP wrapper -> FedAdam)."""
    out, seen = [], set()
    while strategy is not None and id(strategy) not in seen:
        seen.add(id(strategy))
        out.append(strategy)
        strategy = getattr(strategy, "inner", None) or getattr(strategy, "strategy", None)
    return out


def strategy_state(strategy: Any) -> list[dict[str, Any]]:
    """Learned state of each layer, outermost first (deep copies, safe to pickle)."""
    states = []
    for layer in _layers(strategy):
        state = {name: copy.deepcopy(getattr(layer, name)) for name in STRATEGY_STATE_ATTRS
                 if getattr(layer, name, None) is not None}
        accountant = getattr(layer, "accountant", None)
        if accountant is not None and hasattr(accountant, "history"):
            state["accountant_history"] = copy.deepcopy(accountant.history)
        states.append({"class": type(layer).__name__, "state": state})
    return states


def restore_strategy_state(strategy: Any, states: list[dict[str, Any]]) -> None:
    layers = _layers(strategy)
    names = [type(layer).__name__ for layer in layers]
    saved = [s["class"] for s in states]
    if names != saved:
        raise ConfigError(f"the checkpoint was written by strategy layers {saved} but this run "
                          f"builds {names}; resume with the run's original configuration")
    for layer, entry in zip(layers, states):
        for name, value in entry["state"].items():
            if name == "accountant_history":
                layer.accountant.history = copy.deepcopy(value)
            else:
                setattr(layer, name, copy.deepcopy(value))


def rng_state() -> dict[str, Any]:
    """Python (Flower samples sites with `random`), numpy and torch generator states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


@dataclass
class ResumePoint:
    round: int
    state_dict: dict[str, torch.Tensor]
    strategy: list[dict[str, Any]]
    rng: dict[str, Any]
    history: list[dict[str, Any]]
    privacy: dict[str, Any] = field(default_factory=dict)


def load_resume_point(run_dir: Path) -> ResumePoint:
    """The last complete round of `run_dir`, with metrics.jsonl trimmed to match it."""
    path = run_dir / rundir.CHECKPOINT
    if not path.exists():
        raise ConfigError(f"{path}: no checkpoint to resume from (the run has not completed a "
                          f"round, or this is not a run directory)")
    try:
        ckpt = torch.load(path, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing
        raise ConfigError(f"{path}: checkpoint unreadable ({exc})") from None
    if "strategy" not in ckpt or "rng" not in ckpt:
        raise ConfigError(f"{path}: checkpoint lacks strategy/RNG state (written by an older "
                          f"fedclinic); it cannot be resumed exactly")
    last = int(ckpt["round"])
    lines = rundir.read_jsonl(run_dir / rundir.METRICS)
    kept = [line for line in lines if int(line["round"]) <= last]
    if len(kept) != len(lines):
        text = "".join(json.dumps(line) + "\n" for line in kept)
        rundir.atomic_write_bytes(run_dir / rundir.METRICS, text.encode())
    return ResumePoint(round=last, state_dict=ckpt["state_dict"], strategy=ckpt["strategy"],
                       rng=ckpt["rng"], history=kept, privacy=ckpt.get("privacy", {}))
