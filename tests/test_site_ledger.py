"""The site's lifetime ledger: hash-chained, two copies, keyed by the data, composing every run."""

import json
import math
import os
from dataclasses import dataclass, replace

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from client.fingerprint import data_fingerprint, files_fingerprint
from client.ledger import (FileLedgerStore, LedgerTampered, SiteLedger, StateLedgerStore,
                           format_status, ledger_status, site_ledger)
from client.ledger_chain import canonical, lifetime_epsilon, sha256_hex
from client.replay import CachedReply, load_reply, reply_path, save_reply
from client.site import load_site
from common.config import ConfigError, RunConfig
from common.datasets import Split
from common.privacy.accounting import epsilon_of_history

FP = "ab" * 32
DELTA = 1e-5
ROUND = dict(kind="dp-sgd", noise_multiplier=1.1, sample_rate=0.05, steps=36, delta=DELTA)


def _ledger(tmp_path, rounds: int = 3, run: str = "run-a") -> tuple[FileLedgerStore, SiteLedger]:
    store = FileLedgerStore(tmp_path / "ledgers", FP)
    ledger = SiteLedger.open(store, "rdp")
    for r in range(1, rounds + 1):
        ledger.append(run_key=run, server_round=r, **ROUND)
    return store, ledger


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path, rows: list[dict], rechain: bool = False) -> None:
    """Write rows as ledger lines; ``rechain``: recompute every hash and prev (a consistent
    forgery of the whole chain, as a careful editor would make)."""
    lines: list[str] = []
    for row in rows:
        row = dict(row)
        if rechain:
            row["prev"] = sha256_hex(lines[-1]) if lines else "0" * 64
            row["hash"] = sha256_hex(canonical({k: v for k, v in row.items() if k != "hash"}))
        lines.append(canonical(row))
    path.write_text("".join(line + "\n" for line in lines))


def test_append_then_open_verifies_and_gives_back_every_entry(tmp_path):
    store, ledger = _ledger(tmp_path)
    ledger.append(run_key="run-a", server_round=1, kind="count", noise_multiplier=10.0,
                  sample_rate=1.0, steps=1, delta=DELTA, value=101.5)
    again = SiteLedger.open(store, "rdp")
    assert again.entries == ledger.entries and [e.seq for e in again.entries] == [1, 2, 3, 4]
    assert store.primary.read_bytes() == store.backup.read_bytes()
    triples = [(1.1, 0.05, 36)] * 3 + [(10.0, 1.0, 1)]
    expected = epsilon_of_history(triples, DELTA, "rdp")
    assert again.entries[-1].epsilon == pytest.approx(expected, rel=1e-9)
    assert again.lifetime().epsilon(DELTA) == pytest.approx(expected, rel=1e-9)
    eps = [e.epsilon for e in again.entries]
    assert eps == sorted(eps) and eps[0] > 0
    assert again.released("run-a", "count") == 101.5 and again.released("run-b", "count") is None
    (run,) = again.runs()
    assert (run.key, run.rounds, run.steps, run.releases) == ("run-a", 3, 108, 1)
    assert run.epsilon == pytest.approx(expected, rel=1e-9)


def test_a_released_vector_is_kept_in_its_entry_and_an_edit_of_it_is_refused(tmp_path):
    """The per-class counts of a count release (client.release.sample_count) live in the entry
    that charged them: reopened as written, and an edited vector breaks the hash."""
    store, ledger = _ledger(tmp_path, rounds=1)
    ledger.append(run_key="run-a", server_round=1, kind="count", noise_multiplier=10.0,
                  sample_rate=1.0, steps=1, delta=DELTA, value=498.0, values=(381.0, 117.0))
    again = SiteLedger.open(store, "rdp")
    assert again.released_values("run-a", "count") == (381.0, 117.0)
    assert again.released("run-a", "count") == 498.0
    assert again.released_values("run-b", "count") is None
    assert again.entries[0].values is None                  # an entry without one: as before
    rows = _lines(store.primary)
    assert "values" not in rows[0] and rows[1]["values"] == [381.0, 117.0]
    rows[1]["values"] = [300.0, 198.0]
    for path in (store.primary, store.backup):
        _write(path, rows)
    with pytest.raises(LedgerTampered, match="entry 2"):
        SiteLedger.open(store, "rdp")
    _, fresh = _ledger(tmp_path / "fresh", rounds=0)
    with pytest.raises(ConfigError, match="ledger values"):
        fresh.append(run_key="run-a", server_round=1, kind="count", noise_multiplier=10.0,
                     sample_rate=1.0, steps=1, delta=DELTA, value=1.0, values=(float("nan"),))


def test_the_fast_rdp_path_is_the_reference_accountant():
    history = [(1.1, 0.05, 360), (10.0, 1.0, 1), (0.8, 0.02, 500)]
    assert lifetime_epsilon(history, DELTA, "rdp") == epsilon_of_history(history, DELTA, "rdp")


@pytest.mark.parametrize("rehash", [False, True], ids=["hash-left-alone", "hash-recomputed"])
@pytest.mark.parametrize("entry", [2, 3], ids=["middle-entry", "last-entry"])
def test_a_valid_json_edit_of_one_field_is_refused_naming_the_entry(tmp_path, rehash, entry):
    store, _ = _ledger(tmp_path)
    rows = _lines(store.primary)
    rows[entry - 1]["steps"] = 16                           # 36 -> 16: a smaller epsilon
    if rehash:   # a careful editor recomputes that line's hash (but not the chain after it)
        row = rows[entry - 1]
        row["hash"] = sha256_hex(canonical({k: v for k, v in row.items() if k != "hash"}))
    _write(store.primary, rows)
    with pytest.raises(LedgerTampered) as refused:
        SiteLedger.open(store, "rdp")
    message = str(refused.value)
    assert str(store.primary) in message and refused.value.seq == entry
    assert f"entry {entry}: steps changed (steps: 16 here, 36 in the second copy)" in message
    assert ("hash does not match" in message) != rehash
    assert "refuses to train" in message


def test_the_same_edit_in_both_copies_is_still_caught(tmp_path):
    store, _ = _ledger(tmp_path)
    rows = _lines(store.primary)
    rows[-1]["steps"] = 16
    rows[-1]["hash"] = sha256_hex(canonical({k: v for k, v in rows[-1].items() if k != "hash"}))
    for path in (store.primary, store.backup):
        _write(path, rows)
    with pytest.raises(LedgerTampered, match=r"entry 3: epsilon .* stored but the history up to "
                                             r"this entry gives"):
        SiteLedger.open(store, "rdp")


def test_a_decreasing_epsilon_is_refused(tmp_path):
    store, _ = _ledger(tmp_path)
    rows = _lines(store.primary)
    rows[2]["epsilon"] = rows[1]["epsilon"] / 2
    for path in (store.primary, store.backup):
        _write(path, rows, rechain=True)                # hashes and links all consistent
    with pytest.raises(LedgerTampered, match="entry 3: epsilon decreased to"):
        SiteLedger.open(store, "rdp")


def test_a_non_finite_entry_is_refused(tmp_path):
    store, _ = _ledger(tmp_path)
    rows = _lines(store.primary)
    rows[1]["epsilon"] = math.inf
    lines = [canonical(r) for r in rows[:1]]
    row = {k: v for k, v in rows[1].items() if k != "hash"}
    row["hash"] = sha256_hex(json.dumps(row, sort_keys=True, separators=(",", ":")))
    lines.append(json.dumps(row, sort_keys=True, separators=(",", ":")))   # "Infinity"
    lines += [canonical(r) for r in rows[2:]]
    for path in (store.primary, store.backup):
        path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(LedgerTampered, match="entry 2: epsilon=inf is not a finite number"):
        SiteLedger.open(store, "rdp")


def test_a_lost_copy_is_refused_but_a_crash_between_the_two_writes_is_repaired(tmp_path):
    store, ledger = _ledger(tmp_path)
    kept = store.primary.read_text()
    store.primary.unlink()                              # deleted (the backup remains)
    with pytest.raises(LedgerTampered, match=r"\.jsonl: the file is missing while its second "
                                             r"copy .* holds 3 entries"):
        SiteLedger.open(store, "rdp")
    store.primary.write_text(kept)
    store.backup.unlink()
    with pytest.raises(LedgerTampered, match="the second copy is missing while .* holds 3"):
        SiteLedger.open(store, "rdp")
    store.backup.write_text("".join(line + "\n" for line in kept.splitlines()[:2]))
    repaired = SiteLedger.open(store, "rdp")           # primary written, backup not yet
    assert len(repaired.entries) == 3 and store.backup.read_text() == kept
    store.backup.write_text("".join(line + "\n" for line in kept.splitlines()[:1]))
    with pytest.raises(LedgerTampered, match="differs from its second copy"):
        SiteLedger.open(store, "rdp")                   # two entries short: not a crash


def test_two_runs_compose_into_the_lifetime_epsilon(tmp_path):
    store, _ = _ledger(tmp_path, rounds=3, run="run-a")
    ledger = SiteLedger.open(store, "rdp")
    for r in (1, 2):
        ledger.append(run_key="run-b", server_round=r, kind="dp-sgd", noise_multiplier=0.9,
                      sample_rate=0.04, steps=50, delta=DELTA)
    a, b = [(1.1, 0.05, 36)] * 3, [(0.9, 0.04, 50)] * 2
    run_a, run_b = ledger.run("run-a").epsilon(DELTA), ledger.run("run-b").epsilon(DELTA)
    lifetime = SiteLedger.open(store, "rdp").lifetime().epsilon(DELTA)
    assert run_a == pytest.approx(epsilon_of_history(a, DELTA, "rdp"), rel=1e-9)
    assert run_b == pytest.approx(epsilon_of_history(b, DELTA, "rdp"), rel=1e-9)
    assert lifetime > max(run_a, run_b)
    assert lifetime == pytest.approx(epsilon_of_history(a + b, DELTA, "rdp"), rel=1e-9)
    assert ledger.entries[-1].epsilon == pytest.approx(lifetime, rel=1e-9)
    assert [(r.key, r.rounds) for r in ledger.runs()] == [("run-a", 3), ("run-b", 2)]


def test_state_files_are_private_whatever_the_umask(tmp_path):
    from client.audit import AuditLog
    from common.rundir import atomic_write_bytes

    old = os.umask(0)
    try:
        store, _ = _ledger(tmp_path / "state")
        cache = reply_path({"ledger-dir": str(store.directory)}, "run/a")
        save_reply(cache, CachedReply("d", 1, np.zeros(3, np.float32), {"epsilon": 1.0}))
        AuditLog(tmp_path / "site" / "audit.jsonl").record_event("start", "x")
        atomic_write_bytes(tmp_path / "report" / "local-report.jsonl", b"{}\n", mode=0o600)
        data = tmp_path / "data"
        data.mkdir()
        (data / "a.dcm").write_bytes(b"x")
        files_fingerprint(data, tmp_path / "state" / "fingerprint-cache.json")
    finally:
        os.umask(old)
    assert cache == store.directory / "replies" / f"{cache.name}"
    assert cache.name.startswith("run_a-") and cache.name.endswith(".last-reply.npz")
    assert load_reply(cache, "d").metrics == {"epsilon": 1.0}
    for folder in (tmp_path / "state", store.directory, store.backup.parent, cache.parent,
                   tmp_path / "site", tmp_path / "report"):
        assert oct(folder.stat().st_mode & 0o777) == "0o700", folder
    for path in (store.primary, store.backup, store.directory / f"{FP}.lock", cache,
                 tmp_path / "site" / "audit.jsonl", tmp_path / "report" / "local-report.jsonl",
                 tmp_path / "state" / "fingerprint-cache.json"):
        assert oct(path.stat().st_mode & 0o777) == "0o600", path


def _site_file(path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1)
    np.savez(path, **arrays)


def test_the_fingerprint_follows_the_data_not_the_servers_settings(tmp_path):
    path = tmp_path / "site.npz"
    _site_file(path)
    node = {"data-path": str(path), "ledger-dir": str(tmp_path / "state" / "ledgers")}
    site = load_site(RunConfig(image_size=28), node)
    first = data_fingerprint(site, node)
    assert data_fingerprint(load_site(RunConfig(image_size=64, dicom_window="40,400"), node),
                            node) == first
    resized = Split(site.train.images[:, ::2, ::2], site.train.labels)   # other preprocessing
    assert data_fingerprint(replace(site, train=resized), node) == first
    assert (tmp_path / "state" / "fingerprint-cache.json").exists()
    _site_file(path, seed=1)                             # the same name, other patients
    assert data_fingerprint(load_site(RunConfig(), node), node) != first


def test_a_data_folder_is_hashed_once_and_cache_artefacts_are_not_data(tmp_path, monkeypatch):
    import client.fingerprint as fingerprint

    data = tmp_path / "dicom"
    (data / "p1").mkdir(parents=True)
    for i in range(3):
        (data / "p1" / f"{i}.dcm").write_bytes(bytes([i]) * 100)
    cache = tmp_path / "state" / "fingerprint-cache.json"
    calls: list[str] = []
    real = fingerprint.file_digest
    monkeypatch.setattr(fingerprint, "file_digest", lambda p: calls.append(p.name) or real(p))
    first = files_fingerprint(data, cache)
    assert files_fingerprint(data, cache) == first and len(calls) == 3   # the second: cached
    arrays = data / "cache"                              # a run config put the array cache here
    (arrays / "ab").mkdir(parents=True)
    (arrays / "CACHEDIR.TAG").write_text("Signature: 8a477f597d28d172789f06886806bc55\n")
    (arrays / "ab" / ("ab" + "0" * 62 + ".npy")).write_bytes(b"cached")
    (data / ".DS_Store").write_bytes(b"finder")
    assert files_fingerprint(data, cache) == first
    (data / "p1" / "1.dcm").write_bytes(b"\x09" * 100)  # same size, other content
    os.utime(data / "p1" / "1.dcm", ns=(1, 1))
    assert files_fingerprint(data, cache) != first and calls[-1] == "1.dcm"


def test_a_simulated_site_is_keyed_by_its_partition():
    cfg = RunConfig(num_samples=120, sites=2)
    nodes = [{"partition-id": i, "num-partitions": 2} for i in (0, 1)]
    sites = [load_site(cfg, node) for node in nodes]
    prints = [data_fingerprint(site, node) for site, node in zip(sites, nodes)]
    assert prints[0] != prints[1]
    assert data_fingerprint(load_site(cfg, nodes[0]), nodes[0]) == prints[0]


def test_without_a_ledger_folder_the_ledger_lives_in_the_context_state():
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(),
                      run_config={})
    ledger = site_ledger(context, FP, "rdp")
    assert isinstance(ledger.store, StateLedgerStore)
    ledger.append(run_key="r", server_round=1, **ROUND)
    assert len(site_ledger(context, FP, "rdp").entries) == 1


@dataclass(frozen=True)
class _Policy:           # the two fields ledger_status reads of client.policy.SitePolicy
    lifetime_epsilon: float = 24.0
    delta: float | None = None


def test_site_status_lists_spent_and_left_per_dataset(tmp_path):
    store, ledger = _ledger(tmp_path, rounds=2)
    other = SiteLedger.open(FileLedgerStore(store.directory, "cd" * 32), "rdp")
    other.append(run_key="run-x", server_round=1, **ROUND)
    broken = FileLedgerStore(store.directory, "ef" * 32)
    SiteLedger.open(broken, "rdp").append(run_key="run-y", server_round=1, **ROUND)
    broken.primary.unlink()
    spends = {s.fingerprint: s for s in ledger_status(store.directory, _Policy())}
    assert sorted(spends) == sorted([FP, "cd" * 32, "ef" * 32])
    mine = spends[FP]
    assert mine.spent == pytest.approx(ledger.lifetime().epsilon(DELTA), rel=1e-9)
    assert mine.left == pytest.approx(24.0 - mine.spent) and mine.budget == 24.0
    assert [(r.key, r.rounds) for r in mine.runs] == [("run-a", 2)] and mine.entries == 2
    assert spends["cd" * 32].spent < mine.spent
    assert spends["ef" * 32].problem and spends["ef" * 32].left == 0.0
    lines = format_status(list(spends.values()))
    assert any(line.startswith(f"dataset {FP[:12]}: epsilon spent") for line in lines)
    assert any("LEDGER FAILS VERIFICATION" in line for line in lines)
    tighter = {s.fingerprint: s for s in ledger_status(store.directory, _Policy(3.0, 1e-6))}
    assert tighter[FP].spent > mine.spent and tighter[FP].delta == 1e-6
