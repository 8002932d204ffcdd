"""A site's last DP update per run, kept so that a repeated request gets the same answer.

When the server dies mid-round and is resumed, it asks the sites again for the round after its
last checkpoint. A site may already have trained that round under DP and sent (or tried to send)
the update, and its ledger has been charged for it. Training again would release a second noisy
update of the same round and spend epsilon twice for one round. Sending back the update that was
already computed costs nothing more: it is the same output, so no new information about the data.

The cached reply is used only if the request is the same: same run, same round and the same
incoming global weights and config (a sha256 over all three). Anything else trains and is charged
as usual. The cache lives next to the site's ledger file, so only sites that keep a ledger on disk
(`fedclinic site`, or a `ledger-path` node config) have it.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import rundir
from common.config import RESUMABLE_CHANGES


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


def reply_file(ledger_path: Path) -> Path:
    return ledger_path.with_name(ledger_path.stem + ".last-reply.npz")


def load_reply(ledger_path: Path | None, digest: str) -> CachedReply | None:
    """The cached reply to exactly this request, or None (no cache, another request, unreadable:
    an unreadable cache only means training again, which the ledger charges)."""
    if ledger_path is None or not reply_file(ledger_path).exists():
        return None
    try:
        with np.load(reply_file(ledger_path), allow_pickle=False) as arrays:
            if str(arrays["digest"]) != digest:
                return None
            return CachedReply(digest=digest, server_round=int(arrays["round"]),
                               packed=arrays["packed"].copy(),
                               metrics=json.loads(str(arrays["metrics"])))
    except (OSError, ValueError, KeyError):
        return None


def save_reply(ledger_path: Path | None, reply: CachedReply) -> None:
    """Keep only the latest round's reply of this run (a resume asks again for that one only)."""
    if ledger_path is None:
        return
    buffer = io.BytesIO()
    np.savez(buffer, digest=np.array(reply.digest), round=np.array(reply.server_round),
             packed=reply.packed, metrics=np.array(json.dumps(reply.metrics)))
    rundir.atomic_write_bytes(reply_file(ledger_path), buffer.getvalue())
