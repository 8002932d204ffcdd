"""The lifetime ledger's entries and their hash chain: making the next entry, and verifying a
ledger's text (and its second copy) before the site trains on it.

One JSON line per charged release (a DP-SGD round, a noised count, a noised metrics answer):
``seq`` (1, 2, ...), ``prev`` (sha256 of the previous line as written, ``GENESIS`` for the first),
``time``, ``run``, ``round``, ``kind``, the release's ``(noise_multiplier, sample_rate, steps)``,
``delta``, ``epsilon`` (the lifetime epsilon at that delta after this entry, by ``accountant``),
an optional ``value`` (a released noised number), an optional ``values`` (a released noised
vector: the per-class counts of a count release) and ``hash`` (sha256 of the line's canonical
JSON without ``hash``). Verifying recomputes every hash, every link and every epsilon.

Epsilon composes by adding histories (RDP adds per order; PRV composes the loss distributions),
so the history of a ledger is its entries' triples with equal ``(sigma, q)`` summed (`grouped`):
the same epsilon as the concatenation, in a history that stays short over many runs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from common.config import ConfigError
from common.privacy.accounting import epsilon_of_history
from common.privacy.checks import check_accountant, check_delta, check_entry

GENESIS = "0" * 64
KINDS = ("dp-sgd", "count", "metrics")
FIELDS = ("seq", "prev", "time", "run", "round", "kind", "noise_multiplier", "sample_rate",
          "steps", "delta", "epsilon", "accountant")
OPTIONAL = ("value",)
OPTIONAL_VECTORS = ("values",)
EPSILON_RTOL = 1e-9       # a recomputed epsilon equals the stored one to this relative precision
REFUSES = "the site refuses to train on this data until the ledger is restored from a good copy"

Triple = tuple[float, float, int]


class LedgerTampered(ConfigError):
    """A site's lifetime ledger fails verification: edited, truncated, reordered, one copy lost."""

    def __init__(self, source: str, what: str, seq: int | None = None) -> None:
        self.source, self.what, self.seq = source, what, seq
        where = f"entry {seq}: " if seq is not None else ""
        super().__init__(f"privacy ledger {source}: {where}{what}; {REFUSES}")


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    prev: str
    time: str
    run: str
    round: int
    kind: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float            # lifetime epsilon at `delta` after this entry
    accountant: str
    value: float | None
    hash: str
    values: tuple[float, ...] | None = None

    @property
    def triple(self) -> Triple:
        return (self.noise_multiplier, self.sample_rate, self.steps)


def canonical(fields: Mapping[str, Any]) -> str:
    """The one JSON text of ``fields`` that is hashed and written (sorted keys, no spaces)."""
    return json.dumps(dict(fields), sort_keys=True, separators=(",", ":"), allow_nan=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def grouped(triples: Iterable[Triple]) -> list[Triple]:
    """Triples with equal (sigma, q) summed, in order of first appearance (composition adds)."""
    steps: dict[tuple[float, float], int] = {}
    for sigma, q, t in triples:
        steps[(float(sigma), float(q))] = steps.get((float(sigma), float(q)), 0) + int(t)
    return [(sigma, q, t) for (sigma, q), t in steps.items()]


def history(entries: Iterable[LedgerEntry]) -> list[Triple]:
    """The accountant's history of ``entries`` (see `grouped`)."""
    return grouped(e.triple for e in entries)


def lifetime_epsilon(triples: Sequence[Triple], delta: float, accountant: str) -> float:
    """`epsilon_of_history` of ``triples``, fast for RDP: the same sums Opacus'
    RDPAccountant.get_epsilon does, in the same order (so the same float), with each (q, sigma)'s
    per-step RDP computed once per process instead of once per call. Verifying a ledger
    recomputes the epsilon after every entry; without this, a ledger of a few hundred rounds
    took minutes to open. `verify_copies` checks it against `epsilon_of_history` each time."""
    if accountant != "rdp" or not triples:
        return epsilon_of_history(triples, delta, accountant)
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    check_delta(delta)
    rdp = sum([_rdp_per_step(q, sigma) * steps for sigma, q, steps in
               (check_entry(*t) for t in triples)])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order")
        eps, _ = analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp,
                                            delta=delta)
    eps = float(eps)
    return eps if not math.isnan(eps) else epsilon_of_history(triples, delta, accountant)


@functools.lru_cache(maxsize=4096)
def _rdp_per_step(q: float, sigma: float) -> Any:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    return analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1,
                                orders=RDPAccountant.DEFAULT_ALPHAS)


def next_entry(entries: Sequence[LedgerEntry], last_line: str | None, *, run: str,
               server_round: int, kind: str, noise_multiplier: float, sample_rate: float,
               steps: int, delta: float, accountant: str, value: float | None = None,
               values: Sequence[float] | None = None) -> tuple[LedgerEntry, str]:
    """The entry that follows ``entries`` (whose last line as written is ``last_line``) and its
    line; ConfigError naming the field for a value no honest release has."""
    if kind not in KINDS:
        raise ConfigError(f"ledger kind={kind!r}: expected one of {', '.join(KINDS)}")
    if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 0:
        raise ConfigError(f"ledger round={server_round!r}: expected an integer >= 0")
    triple = check_entry(noise_multiplier, sample_rate, steps)
    delta, accountant = check_delta(delta), check_accountant(accountant)
    if value is not None and not _finite(value):
        raise ConfigError(f"ledger value={value!r}: expected a finite number or None")
    if values is not None and not (len(values) and all(map(_finite, values))):
        raise ConfigError(f"ledger values={values!r}: expected finite numbers or None")
    epsilon = lifetime_epsilon(grouped([*(e.triple for e in entries), triple]), delta,
                               accountant)
    fields: dict[str, Any] = {
        "seq": len(entries) + 1, "prev": GENESIS if last_line is None else sha256_hex(last_line),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "run": str(run),
        "round": server_round, "kind": kind, "noise_multiplier": triple[0],
        "sample_rate": triple[1], "steps": triple[2], "delta": delta, "epsilon": epsilon,
        "accountant": accountant}
    if value is not None:
        fields["value"] = float(value)
    if values is not None:
        fields["values"] = [float(v) for v in values]
    fields["hash"] = sha256_hex(canonical(fields))
    return _entry(fields), canonical(fields)


def split_lines(text: str, source: str) -> list[str]:
    """The lines of a ledger text; every line ends with a newline (whole-file writes only)."""
    if not text:
        return []
    if not text.endswith("\n"):
        raise LedgerTampered(source, "the last entry is cut off (no newline at the end)",
                             seq=text.count("\n") + 1)
    return text[:-1].split("\n")


def read_chain(text: str, source: str, other: str | None = None,
               other_label: str = "the other copy") -> list[LedgerEntry]:
    """The verified entries of a ledger text, else LedgerTampered naming ``source``, the entry
    and what is wrong. ``other`` (the second copy's text), if given, only sharpens the message
    with the fields that differ from it."""
    lines = split_lines(text, source)
    hints = _Hints(other, other_label)
    entries: list[LedgerEntry] = []
    highest: dict[tuple[float, str], float] = {}
    for index, line in enumerate(lines):
        seq = index + 1
        try:
            fields = _parse(line)
            entry = _checked(fields, seq, GENESIS if index == 0 else sha256_hex(lines[index - 1]))
            _check_epsilon(entry, entries, highest)
        except _Bad as bad:
            raise LedgerTampered(source, hints.prefix(index, line) + str(bad), seq) from None
        entries.append(entry)
        highest[(entry.delta, entry.accountant)] = entry.epsilon
    if entries:
        _check_reference(entries, source)
    return entries


def _check_reference(entries: list[LedgerEntry], source: str) -> None:
    """The last epsilon once more by the reference accountant (`epsilon_of_history`), so the
    fast path of `lifetime_epsilon` can never drift from it unnoticed."""
    last = entries[-1]
    try:
        reference = epsilon_of_history(history(entries), last.delta, last.accountant)
    except ConfigError as exc:
        raise LedgerTampered(source, f"epsilon cannot be recomputed ({exc})", last.seq) from None
    if not math.isclose(last.epsilon, reference, rel_tol=EPSILON_RTOL, abs_tol=1e-12):
        raise LedgerTampered(source, f"epsilon {last.epsilon!r} stored but the accountant gives "
                             f"{reference!r} (accountant {last.accountant}, delta "
                             f"{last.delta:.3g})", last.seq)


class _Bad(Exception):
    """What is wrong with one line (read_chain adds file, entry and the other copy's view)."""


class _Hints:
    """Which fields of a line differ from the same line of the other copy (a few, by name)."""

    def __init__(self, other: str | None, label: str) -> None:
        self.lines = other[:-1].split("\n") if other and other.endswith("\n") else []
        self.label = label

    def prefix(self, index: int, line: str) -> str:
        if index >= len(self.lines):
            return ""
        try:
            here, there = json.loads(line), json.loads(self.lines[index])
        except ValueError:
            return ""
        if not isinstance(here, dict) or not isinstance(there, dict):
            return ""
        changed = [k for k in sorted(set(here) | set(there))
                   if k not in ("hash", "prev") and here.get(k) != there.get(k)]
        if not changed or len(changed) > 3:
            return ""
        detail = "; ".join(f"{k}: {here.get(k)!r} here, {there.get(k)!r} in {self.label}"
                           for k in changed)
        return f"{', '.join(changed)} changed ({detail}): "


def _finite(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _parse(line: str) -> dict:
    if not line.strip():
        raise _Bad("blank line where an entry should be")
    try:
        fields = json.loads(line)
    except ValueError as exc:
        raise _Bad(f"not valid JSON ({exc})") from None
    if not isinstance(fields, dict):
        raise _Bad(f"a JSON {type(fields).__name__}, expected an object")
    missing = [k for k in (*FIELDS, "hash") if k not in fields]
    extra = [k for k in fields if k not in (*FIELDS, *OPTIONAL, *OPTIONAL_VECTORS, "hash")]
    if missing or extra:
        raise _Bad(f"fields missing {missing} / unexpected {extra}")
    return fields


def _checked(fields: dict, seq: int, prev: str) -> LedgerEntry:
    """One parsed line checked on its own and against the line before it."""
    if fields["seq"] != seq or isinstance(fields["seq"], bool):
        raise _Bad(f"seq={fields['seq']!r}, expected {seq} (an entry was removed, inserted or "
                   f"moved)")
    for key in ("noise_multiplier", "sample_rate", "delta", "epsilon", *OPTIONAL):
        if key in fields and not _finite(fields[key]):
            raise _Bad(f"{key}={fields[key]!r} is not a finite number")
    for key in OPTIONAL_VECTORS:
        if key in fields and not (isinstance(fields[key], list) and fields[key]
                                  and all(map(_finite, fields[key]))):
            raise _Bad(f"{key}={fields[key]!r} is not a list of finite numbers")
    try:
        check_entry(fields["noise_multiplier"], fields["sample_rate"], fields["steps"])
        check_delta(fields["delta"])
        check_accountant(fields["accountant"])
    except ConfigError as exc:
        raise _Bad(str(exc)) from None
    if fields["epsilon"] < 0:
        raise _Bad(f"epsilon={fields['epsilon']!r}: expected >= 0")
    if fields["kind"] not in KINDS:
        raise _Bad(f"kind={fields['kind']!r}: expected one of {', '.join(KINDS)}")
    rnd = fields["round"]
    if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0:
        raise _Bad(f"round={rnd!r}: expected an integer >= 0")
    for key in ("prev", "time", "run", "hash"):
        if not isinstance(fields[key], str):
            raise _Bad(f"{key}={fields[key]!r}: expected a string")
    stored = fields["hash"]
    if sha256_hex(canonical({k: v for k, v in fields.items() if k != "hash"})) != stored:
        raise _Bad("hash does not match (the entry was edited after it was written)")
    if fields["prev"] != prev:
        raise _Bad(f"prev does not match the hash of entry {seq - 1} (entry {seq - 1} was edited,"
                   f" removed or replaced)" if seq > 1 else "prev is not the chain's start")
    return _entry(fields)


def _check_epsilon(entry: LedgerEntry, before: list[LedgerEntry],
                   highest: dict[tuple[float, str], float]) -> None:
    """Never decreasing (same delta and accountant), and equal to the recomputation."""
    last = highest.get((entry.delta, entry.accountant))
    if last is not None and entry.epsilon < last * (1 - EPSILON_RTOL):
        raise _Bad(f"epsilon decreased to {entry.epsilon!r} from {last!r} at delta "
                   f"{entry.delta:.3g} (a lifetime epsilon never decreases)")
    try:
        again = lifetime_epsilon(history([*before, entry]), entry.delta, entry.accountant)
    except ConfigError as exc:
        raise _Bad(f"epsilon cannot be recomputed ({exc})") from None
    if not math.isclose(entry.epsilon, again, rel_tol=EPSILON_RTOL, abs_tol=1e-12):
        raise _Bad(f"epsilon {entry.epsilon!r} stored but the history up to this entry gives "
                   f"{again!r} (accountant {entry.accountant}, delta {entry.delta:.3g})")


def _entry(fields: Mapping[str, Any]) -> LedgerEntry:
    return LedgerEntry(
        seq=int(fields["seq"]), prev=str(fields["prev"]), time=str(fields["time"]),
        run=str(fields["run"]), round=int(fields["round"]), kind=str(fields["kind"]),
        noise_multiplier=float(fields["noise_multiplier"]),
        sample_rate=float(fields["sample_rate"]), steps=int(fields["steps"]),
        delta=float(fields["delta"]), epsilon=float(fields["epsilon"]),
        accountant=str(fields["accountant"]),
        value=None if fields.get("value") is None else float(fields["value"]),
        hash=str(fields["hash"]),
        values=None if fields.get("values") is None else tuple(map(float, fields["values"])))


@dataclass(frozen=True)
class Verified:
    entries: list[LedgerEntry]
    text: str                 # the primary's text: what the next append extends
    repair_backup: bool       # the backup lacks only the primary's last entry (see verify_copies)


def verify_copies(primary: str | None, backup: str | None, primary_source: str,
                  backup_source: str) -> Verified:
    """Verify both copies of a ledger (None: that file is missing) and that they agree.

    Both missing: a fresh ledger. One missing while the other holds entries: refused. The one
    difference accepted is the state a crash between the two writes leaves (the primary is
    written first): the backup lacks exactly the primary's last entry; the caller then rewrites
    the backup. This loses no epsilon: the longer, verified copy is kept."""
    if primary is None and backup is None:
        return Verified([], "", False)
    if primary is None:
        count = len(split_lines(backup or "", backup_source))
        raise LedgerTampered(primary_source, f"the file is missing while its second copy "
                             f"{backup_source} holds {count} entries (deleted or moved?)")
    entries = read_chain(primary, primary_source, backup, "the second copy")
    if backup == primary:
        return Verified(entries, primary, False)
    kept = read_chain(backup or "", backup_source, primary, "the primary")
    crashed = primary.startswith(backup or "") and len(entries) == len(kept) + 1
    if crashed:
        return Verified(entries, primary, True)
    if backup is None:
        raise LedgerTampered(backup_source, f"the second copy is missing while {primary_source} "
                             f"holds {len(entries)} entries (deleted or moved?)")
    lines = split_lines(primary, primary_source)
    first = next((i for i, (a, b) in enumerate(zip(lines, split_lines(backup, backup_source)))
                  if a != b), min(len(entries), len(kept)))
    changed = (_Hints(backup, "the second copy").prefix(first, lines[first])
               if first < len(lines) else "")
    raise LedgerTampered(primary_source, f"{changed}differs from its second copy "
                         f"{backup_source} ({len(entries)} entries here, {len(kept)} there)",
                         seq=first + 1)
