"""The run directory: one folder per run, with fixed file names scripts can rely on."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from common.config import RunConfig
from common.private_files import PRIVATE_FILE, write_private  # noqa: F401 (re-exported)

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
SITES_TABLE = "sites.md"
REPORT = "report.md"
CURVE = "learning_curve.png"
FINAL_MODEL = "final_model.pt"
CHECKPOINT = "checkpoints/latest.pt"


def create_run_dir(cfg: RunConfig, name: str | None = None) -> Path:
    """Make a fresh folder under cfg.output_dir named after time, dataset, partition and strategy."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    slug = name or f"{stamp}-{cfg.dataset}-{cfg.partition}-{cfg.strategy}-seed{cfg.seed}"
    slug = slug.replace(":", "").replace("+", "_").replace("/", "_")
    path = Path(cfg.output_dir) / slug
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path(cfg.output_dir) / f"{slug}-{suffix}"
    path.mkdir(parents=True)
    cfg.save(path / CONFIG)
    return path


def clean_json(value: Any) -> Any:
    """Replace NaN/inf by None recursively so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one line and fsync, so a crash never loses a completed round."""
    with open(path, "a") as fh:
        fh.write(json.dumps(clean_json(record)) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(clean_json(data), indent=2) + "\n").encode())


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write to a temporary file then rename: readers see the old or the new file, never half.

    With ``mode`` (`PRIVATE_FILE` for a site's state files) the file has exactly that mode
    whatever the umask and the write is durable (`common.private_files.write_private`)."""
    if mode is not None:
        write_private(path, data, mode)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_model(path: Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Save weights plus what is needed to rebuild the network (config, round, task)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": state_dict, **meta}, tmp)
    os.replace(tmp, path)
