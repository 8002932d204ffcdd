"""A site's lifetime privacy ledger: every release it made from one dataset, in every run.

Threat model. The coordinator is honest-but-curious and may send any configuration; outsiders
see the network; only the site's own machine is trusted. So the ledger is keyed by a fingerprint
of the site's data (`client.fingerprint`), never by anything the server sends (a new run name
no longer means a fresh budget), and it composes every run's releases with the accountant.

What the file guards against: edits, truncations or losses by accident, by a careless tool or by
someone who edits one number and leaves the rest (each entry holds the sha256 of the previous
line and of itself; every epsilon is recomputed; a second copy must agree). It is not a defence
against someone with write access to the site's state who rewrites a whole consistent chain in
both copies: the site's machine is trusted, as said.

Layout (deployment: node config `ledger-dir`, set by `fedclinic site` to <state>/ledgers):
``<ledger-dir>/<fingerprint>.jsonl`` and its second copy
``<ledger-dir>/backup/<fingerprint>.jsonl``, both rewritten atomically and durably on each
append (temp file, fsync, rename, folder fsync), files 0600 and folders 0700 whatever the
umask. Without a ledger folder (simulation) the
ledger lives in Flower's Context.state, which lasts for one run.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

from flwr.app import ConfigRecord, Context

from client.ledger_chain import (KINDS, LedgerEntry, LedgerTampered, history, next_entry,
                                 verify_copies)
from common.config import ConfigError
from common.private_files import PRIVATE_FILE, private_dir, write_private
from common.privacy.accounting import epsilon_of_history
from common.privacy.checks import check_accountant
from common.privacy.ledger import PrivacyLedger

if TYPE_CHECKING:   # client.policy (SitePolicy) is read only for its two budget fields
    from client.policy import SitePolicy

__all__ = ["BACKUP", "DatasetSpend", "FileLedgerStore", "LEDGER_DIR", "LEDGER_PATH",
           "LedgerStore", "LedgerTampered", "RunSpend", "SiteLedger", "StateLedgerStore",
           "format_status", "ledger_dir", "ledger_status", "site_ledger"]

LEDGER_PATH = "ledger-path"   # node config: a file; the lifetime ledgers go to its folder
LEDGER_DIR = "ledger-dir"     # node config: the site's ledger folder (`fedclinic site`)
BACKUP = "backup"             # <ledger-dir>/backup/<fingerprint>.jsonl: the second copy
SUFFIX = ".jsonl"
STATE_PREFIX = "fedclinic-site-ledger-"
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def ledger_dir(node_config: Mapping[str, object]) -> Path | None:
    """The site's ledger folder: `ledger-dir`, else the folder of `ledger-path`, else None
    (Context.state only)."""
    if node_config.get(LEDGER_DIR):
        return Path(str(node_config[LEDGER_DIR]))
    if node_config.get(LEDGER_PATH):
        return Path(str(node_config[LEDGER_PATH])).parent
    return None


def _check_fingerprint(fingerprint: str) -> str:
    if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
        raise ConfigError(f"data fingerprint {fingerprint!r}: expected 64 lowercase hex digits "
                          f"(a sha256, client.fingerprint.data_fingerprint)")
    return fingerprint


class LedgerStore(ABC):
    """Where one dataset's ledger text lives: a primary and a second copy."""

    fingerprint: str

    @abstractmethod
    def read(self) -> tuple[str | None, str | None]:
        """(primary, backup) texts; None for a copy that does not exist."""

    @abstractmethod
    def write(self, text: str) -> None:
        """Replace both copies by ``text``, the primary first."""

    @abstractmethod
    def sources(self) -> tuple[str, str]:
        """How errors name the primary and the backup."""

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held while reading, verifying and appending (other processes wait)."""
        yield


class FileLedgerStore(LedgerStore):
    """``<directory>/<fp>.jsonl`` plus ``<directory>/backup/<fp>.jsonl``, locked by
    ``<directory>/<fp>.lock`` (flock) so two runs on the same data append one after another."""

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.directory = Path(directory)
        self.fingerprint = _check_fingerprint(fingerprint)
        self.primary = self.directory / f"{fingerprint}{SUFFIX}"
        self.backup = self.directory / BACKUP / f"{fingerprint}{SUFFIX}"

    def read(self) -> tuple[str | None, str | None]:
        return _read(self.primary), _read(self.backup)

    def write(self, text: str) -> None:
        private_dir(self.directory, tighten=True)
        private_dir(self.backup.parent, tighten=True)
        write_private(self.primary, text.encode())
        write_private(self.backup, text.encode())

    def sources(self) -> tuple[str, str]:
        return str(self.primary), str(self.backup)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        private_dir(self.directory, tighten=True)
        fd = os.open(self.directory / f"{self.fingerprint}.lock", os.O_RDWR | os.O_CREAT,
                     PRIVATE_FILE)
        try:
            os.fchmod(fd, PRIVATE_FILE)
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)     # releases the lock


def _read(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"privacy ledger {path}: cannot read it ({exc.strerror or exc}); "
                          f"the site refuses to train rather than start a fresh ledger") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LedgerTampered(str(path), f"not UTF-8 text at byte {exc.start}") from None


class StateLedgerStore(LedgerStore):
    """The ledger in Flower's Context.state (simulation, or a site without a ledger folder): it
    lasts as long as the node's state (one run in simulation). One copy: the state is memory."""

    def __init__(self, context: Context, fingerprint: str) -> None:
        self.context = context
        self.fingerprint = _check_fingerprint(fingerprint)
        self.key = STATE_PREFIX + fingerprint

    def read(self) -> tuple[str | None, str | None]:
        if self.key not in self.context.state:
            return None, None
        text = str(self.context.state[self.key]["text"])
        return text, text

    def write(self, text: str) -> None:
        self.context.state[self.key] = ConfigRecord({"text": text})

    def sources(self) -> tuple[str, str]:
        return f"Context.state[{self.key}]", f"Context.state[{self.key}]"


@dataclass(frozen=True)
class RunSpend:
    """What one run spent on a dataset (its own releases only)."""

    key: str                  # the run key the server sent
    epsilon: float            # this run's epsilon at `delta`, by `accountant`
    delta: float              # the delta of the run's last entry
    accountant: str
    rounds: int               # server rounds charged with DP-SGD
    steps: int                # DP-SGD steps
    releases: int             # noised counts / metrics answers
    first_time: str
    last_time: str


class SiteLedger:
    """One dataset's verified lifetime ledger; `append` charges a release to it."""

    def __init__(self, store: LedgerStore, accountant: str, entries: list[LedgerEntry],
                 text: str) -> None:
        self.store = store
        self.accountant = check_accountant(accountant)
        self._entries = list(entries)
        self._text = text

    @classmethod
    def open(cls, store: LedgerStore, accountant: str, repair: bool = True) -> "SiteLedger":
        """The store's ledger, verified (`client.ledger_chain.verify_copies`): LedgerTampered
        when it fails. ``accountant`` is the one `lifetime`/`run` answer with and new entries
        use; entries made with another are verified with their own. ``repair`` (under the
        store's lock) rewrites a backup that a crash left one entry short; without it, nothing
        is written or locked, so a reader that may not write (`ledger_status`) can open it."""
        check_accountant(accountant)
        with store.lock() if repair else contextlib.nullcontext():
            verified = verify_copies(*store.read(), *store.sources())
            if verified.repair_backup and repair:
                store.write(verified.text)
        return cls(store, accountant, verified.entries, verified.text)

    @property
    def fingerprint(self) -> str:
        return self.store.fingerprint

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return tuple(self._entries)

    def lifetime(self) -> PrivacyLedger:
        """Every release on this dataset, every run: the history admission composes with."""
        return _privacy_ledger(self._entries, self.accountant)

    def run(self, run_key: str) -> PrivacyLedger:
        """The releases of one run."""
        return _privacy_ledger([e for e in self._entries if e.run == run_key], self.accountant)

    def released(self, run_key: str, kind: str) -> float | None:
        """The value last released for ``kind`` in this run (a noised count is released once per
        run and re-sent, never drawn again), or None."""
        values = [e.value for e in self._entries
                  if e.run == run_key and e.kind == kind and e.value is not None]
        return values[-1] if values else None

    def released_values(self, run_key: str, kind: str) -> tuple[float, ...] | None:
        """The vector last released for ``kind`` in this run (the per-class counts of a count
        release), or None."""
        vectors = [e.values for e in self._entries
                   if e.run == run_key and e.kind == kind and e.values is not None]
        return vectors[-1] if vectors else None

    def append(self, *, run_key: str, server_round: int, kind: str, noise_multiplier: float,
               sample_rate: float, steps: int, delta: float, value: float | None = None,
               values: Sequence[float] | None = None) -> LedgerEntry:
        """Charge one release and write both copies before returning; the entry written (its
        ``epsilon`` is the lifetime epsilon at ``delta`` after it). Entries another process
        appended since `open` are verified and kept."""
        if kind not in KINDS:
            raise ConfigError(f"ledger kind={kind!r}: expected one of {', '.join(KINDS)}")
        with self.store.lock():
            if self.store.read() != (self._text, self._text):
                verified = verify_copies(*self.store.read(), *self.store.sources())
                self._entries, self._text = verified.entries, verified.text
            last = self._text[:-1].rsplit("\n", 1)[-1] if self._text else None
            entry, line = next_entry(
                self._entries, last, run=run_key, server_round=server_round, kind=kind,
                noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps,
                delta=delta, accountant=self.accountant, value=value, values=values)
            text = self._text + line + "\n"
            self.store.write(text)
        self._entries.append(entry)
        self._text = text
        return entry

    def runs(self) -> list[RunSpend]:
        """Per run, in the order they first spent on this dataset."""
        keys = list(dict.fromkeys(e.run for e in self._entries))
        return [_run_spend(key, [e for e in self._entries if e.run == key]) for key in keys]


def _privacy_ledger(entries: list[LedgerEntry], accountant: str) -> PrivacyLedger:
    ledger = PrivacyLedger(accountant)
    for sigma, q, steps in history(entries):
        ledger.record(sigma, q, steps)
    return ledger


def _run_spend(key: str, entries: list[LedgerEntry]) -> RunSpend:
    last = entries[-1]
    dp = [e for e in entries if e.kind == "dp-sgd"]
    return RunSpend(key=key, epsilon=epsilon_of_history(history(entries), last.delta,
                                                        last.accountant),
                    delta=last.delta, accountant=last.accountant,
                    rounds=len({e.round for e in dp}), steps=sum(e.steps for e in dp),
                    releases=len(entries) - len(dp), first_time=entries[0].time,
                    last_time=last.time)


def site_ledger(context: Context, fingerprint: str, accountant: str) -> SiteLedger:
    """The verified ledger of the dataset ``fingerprint``: in the site's ledger folder
    (`ledger_dir`), else in Context.state (simulation)."""
    directory = ledger_dir(context.node_config)
    store: LedgerStore = (FileLedgerStore(directory, fingerprint) if directory is not None
                          else StateLedgerStore(context, fingerprint))
    return SiteLedger.open(store, accountant)


@dataclass(frozen=True)
class DatasetSpend:
    """`fedclinic site status`: one dataset's lifetime spend against the site's policy."""

    fingerprint: str
    file: str
    entries: int
    spent: float              # lifetime epsilon at `delta` (inf if the ledger fails verification)
    budget: float             # the policy's lifetime_epsilon
    left: float               # max(0, budget - spent)
    delta: float | None       # the policy's delta, else the ledger's last
    accountant: str
    runs: tuple[RunSpend, ...]
    last_time: str
    problem: str = ""         # why the ledger fails verification ("" when it verifies)


def ledger_status(ledger_dir: Path, policy: "SitePolicy") -> list[DatasetSpend]:
    """Spent and left per dataset in the ledger folder (read only: nothing is repaired)."""
    directory = Path(ledger_dir)
    names = {p.name[:-len(SUFFIX)] for folder in (directory, directory / BACKUP)
             for p in folder.glob(f"*{SUFFIX}")}
    return [_dataset_spend(directory, fp, policy) for fp in sorted(names)
            if _FINGERPRINT.fullmatch(fp)]


def _dataset_spend(directory: Path, fingerprint: str, policy: "SitePolicy") -> DatasetSpend:
    store = FileLedgerStore(directory, fingerprint)
    budget = float(policy.lifetime_epsilon)
    try:
        ledger = SiteLedger.open(store, "rdp", repair=False)
    except ConfigError as exc:      # LedgerTampered, or unreadable
        return DatasetSpend(fingerprint, str(store.primary), 0, math.inf, budget, 0.0,
                            policy.delta, "", (), "", problem=str(exc))
    entries = ledger.entries
    if not entries:
        return DatasetSpend(fingerprint, str(store.primary), 0, 0.0, budget, budget,
                            policy.delta, "", (), "")
    last = entries[-1]
    delta = policy.delta if policy.delta is not None else last.delta
    spent = epsilon_of_history(history(entries), delta, last.accountant)
    return DatasetSpend(fingerprint, str(store.primary), len(entries), spent, budget,
                        max(0.0, budget - spent), delta, last.accountant,
                        tuple(ledger.runs()), last.time)


def format_status(spends: list[DatasetSpend]) -> list[str]:
    """Lines for `fedclinic site status`: per dataset spent/left, then its runs."""
    if not spends:
        return ["no privacy ledger yet: this site has not trained under DP"]
    lines: list[str] = []
    for d in spends:
        if d.problem:
            lines.append(f"dataset {d.fingerprint[:12]}: LEDGER FAILS VERIFICATION: {d.problem}")
            continue
        at = f"delta {d.delta:.2e}, {d.accountant}" if d.delta is not None else "nothing spent"
        lines.append(f"dataset {d.fingerprint[:12]}: epsilon spent {d.spent:.3f} of "
                     f"{d.budget:g}, left {d.left:.3f} ({at}; {d.entries} entries, "
                     f"{len(d.runs)} runs, last {d.last_time or '-'})")
        lines += [f"  run {r.key or '(unnamed)'}: epsilon {r.epsilon:.3f} over {r.rounds} rounds "
                  f"({r.steps} DP-SGD steps, {r.releases} noised releases), {r.first_time} .. "
                  f"{r.last_time}" for r in d.runs]
    return lines
