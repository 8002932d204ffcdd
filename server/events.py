"""The server's console: one line per site event and per run event, from what the server sees.

`fedclinic server` runs Flower's SuperLink unchanged, so it learns what happens from three places,
polled every `POLL_SECONDS` by one background thread (`ServerEvents`):

* the SuperLink's log (`STATE/superlink.log`, read from where it was when the server started):
  a site activated ("connected") or signed off, an activation refused (the key is unknown, or
  known but its previous session still counts as online), a site request refused with 401 (a
  revoked or unknown key), a run created;
* the node registry (Control API `ListNodes` on the loopback SuperLink): a site that stopped
  sending heartbeats ("dropped"), a site revoked, a site registered while the server runs; the
  registry also names every node (`site-names.json` for the ServerApp, server/run_events.py);
* the ServerApp's events file (server/run_events.py): a run started or resumed under its run
  name, a site's policy or budget refusal, a run finished or stopped.

The operator gate says who submitted a run (`operator_request`: the operator certificate's name,
seen on the `start-run` call it passed through).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from server.run_events import EVENTS_FILE, SITE_NAMES_FILE, write_site_names

POLL_SECONDS = 1.0
REGISTRY_EVERY = 3                 # the registry is polled every 3rd time
REFUSAL_REPEAT_SECONDS = 60.0      # a refused request is said again at most this often

_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
ACTIVATED = re.compile(r"\[Fleet\.ActivateNode\] Activated node_id=(\d+)")
DEACTIVATED = re.compile(r"\[Fleet\.DeactivateNode\] Deactivated node_id=(\d+)")
ACTIVATION_REFUSED = re.compile(r"\[/v1/fleet/activate-node\]\[ApiError:\d+\] Attempted to "
                                r"register SuperNode with public key: (b'[^']*'), exception: (.*)")
UNAUTHORIZED = re.compile(r'"POST (/v1/fleet/[a-z-]+) HTTP/[\d.]+" 401')
CREATED_RUN = re.compile(r"Created run (\d+)")


def node_label(name: str, node: int) -> str:
    return f"{name} (node {node})" if name else f"node {node}"


class ServerEvents:
    """Watches the SuperLink (log, registry) and the ServerApp's events; `echo`s one line each."""

    def __init__(self, state: Path, control: Callable[[], object],
                 echo: Callable[[str], None]) -> None:
        self.state = state
        self.log_file = state / "superlink.log"
        self.events_file = state / EVENTS_FILE
        self.names_file = state / SITE_NAMES_FILE
        self._control = control            # a factory: a Control API client (loopback)
        self.echo = echo
        self._log_at = self.log_file.stat().st_size if self.log_file.exists() else 0
        self._events_at = self.events_file.stat().st_size if self.events_file.exists() else 0
        self.nodes: dict[int, str] = {}     # node id -> status
        self.names: dict[int, str] = {}     # node id -> site name
        self.keys: dict[bytes, tuple[int, str]] = {}   # public key -> (node id, name)
        self._signed_off: set[int] = set()
        self._refused_at: dict[str, float] = {}
        self._submitters: list[str] = []    # operators whose start-run is not yet a run
        self._revokers: list[str] = []
        self._runs: dict[int, str] = {}     # run id -> run name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="fedclinic-events")
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ from the operator gate

    def operator_request(self, operator: str, path: str) -> None:
        """The gate saw the operator `operator` call Control API `path`."""
        with self._lock:
            if path.endswith("/start-run"):
                self._submitters.append(operator)
            elif path.endswith("/unregister-node"):
                self._revokers.append(operator)
            elif path.endswith("/stop-run"):
                self.echo(f"fedclinic server: operator {operator!r} asked to stop a run")

    # ------------------------------------------------------------------------------ life cycle

    def start(self) -> None:
        try:
            self.poll_registry(announce=False)
        except Exception:  # noqa: BLE001 - the console must never stop the server
            pass
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _loop(self) -> None:
        tick = 0
        while not self._stop.wait(POLL_SECONDS):
            tick += 1
            steps = [self.read_log, self.read_events]
            if tick % REGISTRY_EVERY == 0:      # each ListNodes is two lines of superlink.log
                steps.insert(1, self.poll_registry)
            for step in steps:
                try:
                    step()
                except Exception:  # noqa: BLE001 - a failed poll is retried next time
                    pass

    # ------------------------------------------------------------------------------- registry

    def poll_registry(self, announce: bool = True) -> None:
        from server.control import list_site_nodes

        client = self._control()
        try:
            nodes = list_site_nodes(client)
        finally:
            client.close()
        changed = False
        for info in nodes:
            node, status, name = int(info.node_id), str(info.status), str(info.name)
            if self.names.get(node) != name or self.nodes.get(node) != status:
                changed = True
            self.names[node] = name
            self.keys[bytes(info.public_key)] = (node, name)
            before = self.nodes.get(node)
            self.nodes[node] = status
            if announce and before != status:
                self._node_changed(node, before, status)
        if changed:
            write_site_names(self.names_file, self.names, self.nodes)

    def _node_changed(self, node: int, before: str | None, status: str) -> None:
        who = node_label(self.names.get(node, ""), node)
        if before is None and status != "unregistered":
            self.echo(f"fedclinic server: site {who} registered")
        if status == "unregistered" and before != "unregistered":
            by = self._revokers.pop(0) if self._revokers else None
            self.echo(f"fedclinic server: site {who} revoked"
                      + (f" by operator {by!r}" if by else "")
                      + "; its next request is refused and it is left out of later rounds")
        elif status == "online" and before != "online":
            self._announce_connected(node)
        elif status == "offline" and before == "online":
            if node in self._signed_off:
                self._signed_off.discard(node)
            else:
                self.echo(f"fedclinic server: site {who} dropped: no heartbeat within 2 of "
                          f"its intervals (the site stopped, lost its network, or its host went "
                          f"down); a round under way stops waiting for it")

    def _announce_connected(self, node: int) -> None:
        self.echo(f"fedclinic server: site {node_label(self.names.get(node, ''), node)} "
                  f"connected")

    # ------------------------------------------------------------------------ SuperLink's log

    def read_log(self) -> None:
        if not self.log_file.exists():
            return
        if self.log_file.stat().st_size < self._log_at:   # a new log (the state was reset)
            self._log_at = 0
        lines, self._log_at = _complete_lines(self.log_file, self._log_at)
        for raw in lines:
            self._log_line(_COLOUR.sub("", raw))

    def _log_line(self, line: str) -> None:
        if found := ACTIVATED.search(line):
            node = int(found[1])
            if self.nodes.get(node) != "online":
                self.nodes[node] = "online"
                self._announce_connected(node)
        elif found := DEACTIVATED.search(line):
            node = int(found[1])
            self._signed_off.add(node)
            if self.nodes.get(node) == "online":
                self.nodes[node] = "offline"
                self.echo(f"fedclinic server: site {node_label(self.names.get(node, ''), node)} "
                          f"dropped: it signed off (stopped or restarted)")
                self._signed_off.discard(node)
        elif found := ACTIVATION_REFUSED.search(line):
            self._activation_refused(found[1], found[2])
        elif found := UNAUTHORIZED.search(line):
            self._say_refused(f"401 {found[1]}",
                              "fedclinic server: refused a site's request (401: signed by a key "
                              "that is not registered or was revoked)")
        elif found := CREATED_RUN.search(line):
            with self._lock:
                by = self._submitters.pop(0) if self._submitters else None
            self.echo(f"fedclinic server: run {found[1]} submitted"
                      + (f" by operator {by!r}" if by else ""))

    def _activation_refused(self, key_repr: str, reason: str) -> None:
        try:
            key = ast.literal_eval(key_repr)
        except (ValueError, SyntaxError):
            key = b""
        node, name = self.keys.get(key, (None, ""))
        fingerprint = hashlib.sha256(key).hexdigest()[:16] if key else "?"
        if node is None:
            said = (f"fedclinic server: refused key sha256:{fingerprint}...: it is not "
                    f"registered (only keys in site-keys/ may join)")
        elif self.nodes.get(node) == "unregistered":
            said = f"fedclinic server: refused site {node_label(name, node)}: its key was revoked"
        else:
            said = (f"fedclinic server: refused site {node_label(name, node)} for now: its "
                    f"previous session still counts as online ({reason.strip()})")
        self._say_refused(f"key {fingerprint}", said)

    def _say_refused(self, what: str, line: str) -> None:
        now = time.monotonic()
        if now - self._refused_at.get(what, -REFUSAL_REPEAT_SECONDS) >= REFUSAL_REPEAT_SECONDS:
            self._refused_at[what] = now
            self.echo(line)

    # --------------------------------------------------------------------- ServerApp's events

    def read_events(self) -> None:
        if not self.events_file.exists():
            return
        lines, self._events_at = _complete_lines(self.events_file, self._events_at)
        for raw in lines:
            try:
                self._run_event(json.loads(raw))
            except (ValueError, KeyError, TypeError):
                continue

    def _run_event(self, event: dict) -> None:
        kind, run = event["event"], event.get("run_id")
        name = event.get("run_name", "")
        if name and run is not None:
            self._runs[int(run)] = name
        label = f"run {run} ({name or self._runs.get(int(run or 0), '?')})"
        if kind == "started":
            self.echo(f"fedclinic server: {label} started: rounds 1..{event.get('rounds')}, "
                      f"{event.get('sites')} sites")
        elif kind == "resumed":
            self.echo(f"fedclinic server: {label} resumed after round {event.get('after_round')}"
                      f"; rounds {int(event.get('after_round', 0)) + 1}..{event.get('rounds')}"
                      f" follow")
        elif kind == "refused":
            self.echo(f"fedclinic server: {label}: site {event.get('site')} refused: "
                      f"{event.get('reason')} (not asked again in this run)")
        elif kind == "finished":
            self.echo(f"fedclinic server: {label} finished: {event.get('outcome')}")


def _complete_lines(path: Path, offset: int) -> tuple[list[str], int]:
    """The whole lines written to ``path`` after byte ``offset``, and the offset after the last
    of them (a line still being written is read next time)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        chunk = fh.read()
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    return chunk[:end].decode(errors="replace").splitlines(), offset + end + 1
