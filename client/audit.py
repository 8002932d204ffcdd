"""What left the site: an append-only JSONL audit log of every reply, and a check on each reply.

One line per reply the site sent (or refused to send): time, run, round, message type, the number
of bytes and the sha256 of the payload exactly as Flower ships it (the serialized objects of the
message's content: arrays and metric records), epsilon after the round, and which code produced it. The file
is opened in append mode and fsync'd per line; the site never rewrites or truncates it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from common.private_files import PRIVATE_FILE, private_dir
from common.releases import EVALUATE, TRAIN, allowed_metric_keys

ALLOWED_RECORDS = (ArrayRecord, MetricRecord)


def payload_digest(message: Message) -> tuple[int, str]:
    """(bytes, sha256) over every object Flower serializes for the message's content (records,
    arrays, metrics), in object-id order. Message metadata (ids, timestamps) is left out, so the
    same weights give the same hash wherever it is computed."""
    if message.has_error():
        return 0, hashlib.sha256(b"").hexdigest()
    objects = get_all_nested_objects(message.content)
    digest = hashlib.sha256()
    total = 0
    for object_id in sorted(objects):
        data = objects[object_id].deflate()
        digest.update(data)
        total += len(data)
    return total, digest.hexdigest()


def check_outgoing(reply: Message, request: Message | None = None) -> str:
    """'' if the reply holds only model weights and scalar metrics whose keys the table of
    what leaves a site (common.releases) lists for its message type, else what is wrong.

    The DP mode is the request's (config ``dp``): under dp='sample' only the DP keys pass;
    without a request, or without DP, every listed key does (`allowed_metric_keys`)."""
    if reply.has_error():
        return ""
    allowed = _allowed_keys(reply, request)
    for name, record in reply.content.items():
        if not isinstance(record, ALLOWED_RECORDS):
            return (f"reply record {name!r} is a {type(record).__name__}; a site sends only model "
                    f"weights (ArrayRecord) and scalar metrics (MetricRecord)")
        if isinstance(record, MetricRecord):
            for key, value in record.items():
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    return (f"metric {name}.{key} is a {type(value).__name__}; a site sends only "
                            f"scalar metrics")
                if key not in allowed:
                    return (f"metric {name}.{key} is not one a {_kind(reply)} reply may carry "
                            f"{'under DP ' if _is_dp(request) else ''}(docs/what-leaves.md)")
    return ""


def _kind(reply: Message) -> str:
    """'train' for 'train' and 'train.<action>' message types."""
    return reply.metadata.message_type.split(".", 1)[0]


def _is_dp(request: Message | None) -> bool:
    if request is None or request.has_error() or "config" not in request.content:
        return False
    return request.content["config"].get("dp") == "sample"


def _allowed_keys(reply: Message, request: Message | None) -> frozenset[str]:
    """The metric keys the reply may carry; none for message types other than train/evaluate."""
    if _kind(reply) not in (TRAIN, EVALUATE):
        return frozenset()
    return allowed_metric_keys(_kind(reply), _is_dp(request))


def _round_of(message: Message) -> int | None:
    try:
        config = message.content["config"]
    except KeyError:
        return None
    value = config.get("server-round")
    return None if value is None else int(value)


@dataclass
class AuditLog:
    path: Path

    def _append(self, entry: dict) -> None:
        private_dir(self.path.parent)    # a folder it creates is 0700
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry})
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
        try:
            os.fchmod(fd, PRIVATE_FILE)   # 0600 whatever the umask or an older file's mode
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def record_reply(self, request: Message, reply: Message, run_id: int, code: str
                     ) -> tuple[int, str]:
        size, sha = payload_digest(reply)
        entry: dict = {"event": "reply", "run_id": run_id, "round": _round_of(request),
                       "type": request.metadata.message_type, "bytes": size, "sha256": sha,
                       "code": code}
        if reply.has_error():
            entry.update(status="error", reason=reply.error.reason)
        else:
            entry["status"] = "ok"
            entry["arrays"] = sum(len(r) for r in reply.content.array_records.values())
            for record in reply.content.metric_records.values():
                if "epsilon" in record:
                    entry["epsilon"] = float(record["epsilon"])
                    entry["delta"] = float(record["delta"])
                if record.get("replayed"):   # the update already sent for this round, re-sent
                    entry["replayed"] = True
        self._append(entry)
        return size, sha

    def record_timing(self, run_id: int, sha256: str, **seconds: float) -> None:
        """How long the site spent on a reply it sent (pull, ClientApp, whole task)."""
        self._append({"event": "timing", "run_id": run_id, "sha256": sha256,
                      **{k: round(v, 4) for k, v in seconds.items()}})

    def record_refusal(self, request: Message, run_id: int, code: str, reason: str) -> None:
        self._append({"event": "refused", "run_id": run_id, "round": _round_of(request),
                      "type": request.metadata.message_type, "code": code, "reason": reason})

    def record_event(self, event: str, detail: str) -> None:
        self._append({"event": event, "detail": detail})

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
