"""A site's last DP update per run, kept so that a repeated request gets the same answer.

When the server dies mid-round and is resumed, it asks the sites again for the round after its
last checkpoint. A site may already have trained that round under DP and sent (or tried to send)
the update, and its ledger has been charged for it. Training again would release a second noisy
update of the same round and spend epsilon twice for one round. Sending back the update that was
already computed costs nothing more: it is the same output, so no new information about the data.

The cached reply is used only if the request is the same: same run, same round and the same
incoming global weights and config (a sha256 over all three). Anything else trains and is charged
as usual. The cache lives in the site's ledger folder, ``<ledger-dir>/replies/<run>.last-reply.npz``
(files 0600, folder 0700), so only sites that keep a ledger on disk (`fedclinic site`, or a
`ledger-path` node config) have it.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from client.ledger import ledger_dir
from common.config import RESUMABLE_CHANGES
from common.private_files import private_dir, write_private

REPLIES = "replies"            # <ledger-dir>/replies/
SUFFIX = ".last-reply.npz"


@dataclass(frozen=True)
class CachedReply:
    digest: str                     # sha256 of the request it answered
    server_round: int
    packed: np.ndarray              # the packed weights that were sent
    metrics: dict[str, float]       # the metrics that were sent (epsilon after that round, ...)


def request_digest(run_key: str, server_round: int, packed: np.ndarray, config: dict) -> str:
    """Identify a train request: run, round, the global weights and the config it carries,
    less the settings a resume may change (rounds, timeout, quorum, the resume flag itself),
    which do not change what a site computes in a round."""
    kept = {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}
    digest = hashlib.sha256()
    digest.update(f"{run_key}\n{server_round}\n".encode())
    digest.update(json.dumps(kept, sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(packed).tobytes())
    return digest.hexdigest()


def reply_path(node_config: Mapping[str, object], run_key: str) -> Path | None:
    """Where this site keeps the last DP reply of a run: ``<ledger folder>/replies/<run>
    .last-reply.npz`` (client.ledger.ledger_dir), or None when the site keeps no ledger folder."""
    directory = ledger_dir(node_config)
    return None if directory is None else directory / REPLIES / f"{safe_name(run_key)}{SUFFIX}"


def safe_name(run_key: str) -> str:
    """A file name for a server-chosen run key: other characters become "_", and a key that
    had any (or is long) gets a digest of itself, so two keys never share a file."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_key)
    if safe == run_key and 0 < len(safe) <= 100:
        return safe
    return f"{safe[:64]}-{hashlib.sha256(run_key.encode()).hexdigest()[:16]}"


def reply_file(path: Path) -> Path:
    """The cache file: ``path`` itself (from `reply_path`), or, from the per-run ledger path
    that client/train_task.py passed before the lifetime ledger (``<dir>/<run>.json``), the
    file of that run under ``<dir>/replies/``."""
    if path.name.endswith(SUFFIX):
        return path
    return path.parent / REPLIES / f"{path.stem}{SUFFIX}"


def load_reply(path: Path | None, digest: str) -> CachedReply | None:
    """The cached reply to exactly this request, or None (no cache, another request, unreadable:
    an unreadable cache only means training again, which the ledger charges)."""
    if path is None or not reply_file(path).exists():
        return None
    try:
        with np.load(reply_file(path), allow_pickle=False) as arrays:
            if str(arrays["digest"]) != digest:
                return None
            return CachedReply(digest=digest, server_round=int(arrays["round"]),
                               packed=arrays["packed"].copy(),
                               metrics=json.loads(str(arrays["metrics"])))
    except (OSError, ValueError, KeyError):
        return None


def save_reply(path: Path | None, reply: CachedReply) -> None:
    """Keep only the latest round's reply of this run (a resume asks again for that one only);
    written atomically, 0600, in a 0700 folder."""
    if path is None:
        return
    buffer = io.BytesIO()
    np.savez(buffer, digest=np.array(reply.digest), round=np.array(reply.server_round),
             packed=reply.packed, metrics=np.array(json.dumps(reply.metrics)))
    target = reply_file(path)
    private_dir(target.parent, tighten=True)
    write_private(target, buffer.getvalue())
