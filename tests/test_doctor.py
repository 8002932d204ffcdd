"""`fedclinic site doctor` against a real TLS server (Python's ssl module) on 127.0.0.1."""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from client import validate
from client.check import Check
from client.doctor import render, run_doctor
from client.readiness.address import parse_address
from client.readiness.certificates import check_ca_cert
from client.readiness.data import check_data, check_validation
from client.readiness.site_key import check_site_key
from client.readiness.storage import check_state_dir
from client.validation.report import ValidationReport, build_report
from deploy.certs import CertBundle, init_consortium
from fedclinic.cli import site as doctor_cli
from runtime.ports import free_port

TIMEOUT = 3.0


class TLSServer:
    """Accepts connections on a free port and completes TLS handshakes with one certificate."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(TIMEOUT)
            try:
                with self.context.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                conn.close()   # a plain TCP probe or a client that rejected the certificate

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> CertBundle:
    return init_consortium(tmp_path_factory.mktemp("good"), ["localhost"], ["127.0.0.1"],
                           ["site-1"])


@pytest.fixture(scope="module")
def server(good: CertBundle) -> Iterator[TLSServer]:
    srv = TLSServer(good.server_cert, good.server_key)
    yield srv
    srv.close()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A site's data and state folders; they hold no medical images, so data validation is
    stubbed to pass unless a test replaces it."""
    monkeypatch.setattr(validate, "validate_site_data", lambda path: _report())
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(b"x" * 1_500_000)
    (data / "sub").mkdir()
    (data / "sub" / "b.bin").write_bytes(b"y" * 500_000)
    return {"data": data, "state": tmp_path / "state"}


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def _report(*checks: Check) -> ValidationReport:
    return build_report(Path("data"), "dicom", list(checks), {}, {})


def test_everything_ok(good: CertBundle, server: TLSServer, site: dict[str, Path]) -> None:
    checks = run_doctor(f"127.0.0.1:{server.port}", good.sites[0].ca_cert, good.sites[0].key,
                        site["data"], site["state"], min_free_gb=0.001, timeout=TIMEOUT)
    by = _by_name(checks)
    assert list(by) == ["CA certificate", "server reachable", "TLS handshake",
                        "server certificate", "site key", "site data", "data validation",
                        "state folder", "free disk space"]
    assert {c.status for c in checks} == {"ok"}, render(checks)
    assert "matches 127.0.0.1" in by["server certificate"].detail
    assert "2 files, 2.0 MB" in by["site data"].detail
    assert "passes the site data checks" in by["data validation"].detail
    assert "secp384r1" in by["site key"].detail and "0600" in by["site key"].detail
    assert not site["state"].exists()   # the doctor changes nothing
    text = render(checks)
    assert text.count("[ ok ]") == 9 and text.endswith("Result: READY: all 9 checks passed.")


def test_dns_name_matches_too(good: CertBundle, server: TLSServer) -> None:
    by = _by_name(run_doctor(f"localhost:{server.port}", good.ca_cert, None, None, None,
                             timeout=TIMEOUT))
    if by["server reachable"].status == "error":
        pytest.skip("localhost does not resolve to 127.0.0.1 here")
    assert by["server certificate"].status == "ok"
    assert "DNS:localhost" in by["server certificate"].detail
    assert set(by) == {"CA certificate", "server reachable", "TLS handshake",
                       "server certificate"}   # None inputs are not checked


def test_wrong_ca_fails_the_tls_check(tmp_path: Path, server: TLSServer) -> None:
    other = init_consortium(tmp_path / "other", ["localhost"], ["127.0.0.1"], [])
    checks = run_doctor(f"127.0.0.1:{server.port}", other.ca_cert, None, None, None,
                        timeout=TIMEOUT)
    by = _by_name(checks)
    assert by["CA certificate"].status == "ok" and by["server reachable"].status == "ok"
    assert by["TLS handshake"].status == "error"
    assert "does not verify against" in by["TLS handshake"].detail
    assert str(other.ca_cert) in by["TLS handshake"].detail
    assert "wrong ca.crt" in by["TLS handshake"].detail
    assert "NOT verified" in by["server certificate"].detail
    assert "Result: NOT READY: 1 error" in render(checks)


def test_closed_port_is_an_unreachable_server(good: CertBundle) -> None:
    port = free_port()
    checks = run_doctor(f"127.0.0.1:{port}", good.ca_cert, None, None, None, timeout=TIMEOUT)
    by = _by_name(checks)
    assert by["server reachable"].status == "error"
    assert f"127.0.0.1:{port}" in by["server reachable"].detail
    assert "Connection refused" in by["server reachable"].detail
    assert "TLS handshake" not in by   # nothing to shake hands with


def test_certificate_for_another_host_fails_the_name_check(tmp_path: Path) -> None:
    other = init_consortium(tmp_path / "c", ["otherhost"], [], [])
    srv = TLSServer(other.server_cert, other.server_key)
    try:
        by = _by_name(run_doctor(f"127.0.0.1:{srv.port}", other.ca_cert, None, None, None,
                                 timeout=TIMEOUT))
    finally:
        srv.close()
    assert by["TLS handshake"].status == "ok"   # the chain is fine ...
    check = by["server certificate"]            # ... the name is not
    assert check.status == "error"
    assert "DNS:otherhost" in check.detail and "'127.0.0.1'" in check.detail
    assert "--server-ip 127.0.0.1" in check.detail


def test_certificate_expiring_soon_is_a_warning(tmp_path: Path) -> None:
    short = init_consortium(tmp_path / "c", [], ["127.0.0.1"], [], days=10)
    srv = TLSServer(short.server_cert, short.server_key)
    try:
        by = _by_name(run_doctor(f"127.0.0.1:{srv.port}", short.ca_cert, None, None, None,
                                 timeout=TIMEOUT))
    finally:
        srv.close()
    assert by["server certificate"].status == "warning"
    assert "expires in 9 days" in by["server certificate"].detail or \
        "expires in 10 days" in by["server certificate"].detail


def test_readable_key_is_a_warning(good: CertBundle, tmp_path: Path) -> None:
    key = tmp_path / "site.key"
    shutil.copyfile(good.sites[0].key, key)
    key.chmod(0o644)
    check = check_site_key(key)
    assert check.status == "warning"
    assert "0644" in check.detail and f"chmod 600 {key}" in check.detail
    key.chmod(0o600)
    assert check_site_key(key).status == "ok"


def test_unusable_keys_are_errors(good: CertBundle, tmp_path: Path) -> None:
    assert "does not exist" in check_site_key(tmp_path / "missing.key").detail
    pem = tmp_path / "pem.key"   # a PEM (not OpenSSH) key: Flower cannot load it
    pem.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    assert "not an unencrypted OpenSSH private key" in check_site_key(pem).detail
    ed = tmp_path / "ed.key"
    ed.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    ed.chmod(0o600)
    check = check_site_key(ed)
    assert check.status == "error" and "only EC keys on a NIST curve" in check.detail
    empty = tmp_path / "empty.key"
    empty.write_bytes(b"")
    assert check_site_key(empty).status == "error"


def test_huge_min_free_disk_is_an_error(good: CertBundle, site: dict[str, Path]) -> None:
    checks = run_doctor(f"127.0.0.1:{free_port()}", good.ca_cert, None, None, site["state"],
                        min_free_gb=1e9)
    by = _by_name(checks)
    assert by["state folder"].status == "ok" and "will be created" in by["state folder"].detail
    assert by["free disk space"].status == "error"
    assert "at least 1e+09 GB needed" in by["free disk space"].detail


def test_state_and_data_problems(tmp_path: Path, site: dict[str, Path]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert check_state_dir(blocker).status == "error"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no data files" in check_data(empty).detail
    assert check_data(tmp_path / "nope").status == "error"
    one = check_data(site["data"] / "a.bin")   # a single data file is fine too
    assert one.status == "ok" and "1 file, 1.5 MB" in one.detail
    site["state"].mkdir()
    assert check_state_dir(site["state"]).detail.endswith("is writable")


def test_ca_problems(good: CertBundle, tmp_path: Path) -> None:
    check = check_ca_cert(good.server_cert, dt.datetime.now(dt.timezone.utc))
    assert check.status == "error" and "is not a CA certificate" in check.detail
    junk = tmp_path / "junk.crt"
    junk.write_text("not a cert")
    checks = run_doctor("127.0.0.1:1", junk, None, None, None, timeout=TIMEOUT)
    assert "not a PEM certificate" in checks[0].detail
    assert "TLS handshake" not in _by_name(checks)


def test_validator_results_are_summarised(site: dict[str, Path],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    errors = [Check("a.bin", "error", "not an image"), Check("b.bin", "error", "no label"),
              Check("c", "error", "x"), Check("d", "error", "y")]
    monkeypatch.setattr(validate, "validate_site_data", lambda path: _report(*errors))
    check = check_validation(site["data"])
    assert check.status == "error"
    assert check.detail.startswith("4 problem(s): a.bin: not an image; b.bin: no label; c: x; "
                                   "... and 1 more")
    assert f"fedclinic site validate {site['data']}" in check.detail
    few = Check("class balance", "warning", "few samples")
    monkeypatch.setattr(validate, "validate_site_data", lambda path: _report(few))
    assert check_validation(site["data"]).status == "warning"
    monkeypatch.setattr(validate, "validate_site_data", lambda path: _report())
    assert check_validation(site["data"]).status == "ok"

    def raises(path: Path) -> None:
        raise ValueError(f"{path}: labels missing")

    monkeypatch.setattr(validate, "validate_site_data", raises)
    assert "labels missing" in check_validation(site["data"]).detail


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:8000", ("127.0.0.1", 8000)),
    ("fl.example.org:443", ("fl.example.org", 443)),
    ("[2001:db8::5]:8000", ("2001:db8::5", 8000)),
])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("bad", ["localhost", "host:0", "host:99999", "2001:db8::5:8000", ""])
def test_bad_addresses_are_one_error(bad: str, good: CertBundle) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_address(bad)
    checks = run_doctor(bad, good.ca_cert, None, None, None)
    assert [(c.name, c.status) for c in checks[1:]] == [("server address", "error")]


def test_render_verdicts() -> None:
    ok, warn = Check("a", "ok", "fine"), Check("b", "warning", "hmm")
    err = Check("c", "error", "broken")
    assert render([ok, warn]).splitlines() == ["[ ok ] a: fine", "[warn] b: hmm", "",
                                               "Result: READY with 1 warning: read the [warn] "
                                               "lines."]
    assert render([err, err, warn]).endswith("NOT READY: 2 errors, 1 warning. Fix the [FAIL] "
                                             "lines, then run the doctor again.")
    with pytest.raises(ValueError, match="'fine'"):
        Check("x", "fine", "y")


def test_cli(good: CertBundle, server: TLSServer, site: dict[str, Path],
             capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    doctor_cli.add_doctor_arguments(parser)
    for action in parser._actions:
        if action.option_strings != ["-h", "--help"]:
            assert action.help.endswith(")") and "(default: " in action.help
    args = parser.parse_args(["--server", f"127.0.0.1:{server.port}", "--ca-cert",
                              str(good.ca_cert), "--site-key", str(good.sites[0].key),
                              "--data", str(site["data"]), "--state", str(site["state"]),
                              "--min-free-gb", "0.001"])
    assert doctor_cli.run_doctor(args) == 0
    assert "READY: all 9 checks passed" in capsys.readouterr().out
    args.min_free_gb = 1e9
    assert doctor_cli.run_doctor(args) == 1
    defaults = parser.parse_args(["--ca-cert", "ca.crt"])
    assert (defaults.server, defaults.state, defaults.min_free_gb, defaults.site_key) == (
        "127.0.0.1:8000", Path("fedclinic-site"), 5.0, None)


def test_the_real_validator_is_used(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not medical images")
    check = check_validation(tmp_path)
    assert check.status == "error", check
    assert "problem(s)" in check.detail and "Check(" not in check.detail
    assert f"fedclinic site validate {tmp_path}" in check.detail
