"""`deploy.certs` (the consortium's certificates and site keys) and the deploy/ files."""

from __future__ import annotations

import argparse
import configparser
import ipaddress
import os
import re
import shlex
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from deploy import certs
from deploy.certs import CertError, add_site, init_consortium, instructions, new_site_key
from fedclinic.cli import certs as certs_cli

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> certs.CertBundle:
    out = tmp_path_factory.mktemp("consortium") / "certs"
    return init_consortium(out, ["fl.example.org", "localhost"], ["127.0.0.1", "10.1.2.3"],
                           ["site-1", "site_2", "Site3"], days=100)


# --- certificates ----------------------------------------------------------------------------


def test_layout_is_as_documented(bundle: certs.CertBundle) -> None:
    out = bundle.out
    expected = {"ca/ca.crt", "ca/ca.key", "server/server.crt", "server/server.key",
                "server/ca.crt", "operator/operator.crt", "operator/operator.key"}
    for name in ("site-1", "site_2", "Site3"):
        expected |= {f"sites/{name}/{name}.key", f"sites/{name}/{name}.pub",
                     f"sites/{name}/ca.crt", f"site-keys/{name}.pub"}
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == expected
    assert [s.name for s in bundle.sites] == ["site-1", "site_2", "Site3"]
    assert bundle.server_cert == out / "server" / "server.crt"


def test_server_chain_verifies_against_the_ca(bundle: certs.CertBundle) -> None:
    ca, server = _cert(bundle.ca_cert), _cert(bundle.server_cert)
    server.verify_directly_issued_by(ca)
    # cryptography's RFC 5280 / CA-B-Forum verifier: the chain and the names are valid as a
    # TLS client would check them.
    store = Store([ca])
    for subject in (x509.DNSName("fl.example.org"), x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("10.1.2.3"))):
        chain = PolicyBuilder().store(store).build_server_verifier(subject).verify(server, [])
        assert chain[-1] == ca
    with pytest.raises(Exception, match="(?i)name|san|subject"):
        PolicyBuilder().store(store).build_server_verifier(
            x509.DNSName("evil.example.org")).verify(server, [])
    # every copy of ca.crt is the CA
    for copy in [bundle.server_ca_cert, *(s.ca_cert for s in bundle.sites)]:
        assert copy.read_bytes() == bundle.ca_cert.read_bytes()


def test_server_cert_has_exactly_the_requested_names_and_server_auth(
        bundle: certs.CertBundle) -> None:
    server = _cert(bundle.server_cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("10.1.2.3")]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert 100 <= lifetime.days <= 101
    assert bundle.server_not_after == server.not_valid_after_utc


def test_operator_cert_is_a_client_cert_with_the_operator_role(bundle: certs.CertBundle) -> None:
    operator, ca = _cert(bundle.operator_cert), _cert(bundle.ca_cert)
    operator.verify_directly_issued_by(ca)
    eku = operator.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]        # never a server's
    assert operator.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    units = operator.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert [u.value for u in units] == [certs.OPERATOR_ROLE]
    key = serialization.load_pem_private_key(bundle.operator_key.read_bytes(), None)
    assert key.public_key() == operator.public_key()
    assert 100 <= (operator.not_valid_after_utc - operator.not_valid_before_utc).days <= 101


def test_issue_operator_needs_the_ca_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    bundle = init_consortium(tmp_path / "c", ["localhost"], [], [])
    cert, key = certs.issue_operator(bundle.out, "alice", days=10)
    assert (cert.name, key.name, _mode(key)) == ("alice.crt", "alice.key", 0o600)
    assert _cert(cert).subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "alice"
    with pytest.raises(CertError, match="already exists"):
        certs.issue_operator(bundle.out, "alice")
    certs.issue_operator(bundle.out, "alice", force=True)
    with pytest.raises(CertError, match="operator name"):
        certs.issue_operator(bundle.out, "../x")
    bundle.ca_key.unlink()                                     # the CA key stays offline
    with pytest.raises(CertError, match="ca/ca.key"):
        certs.issue_operator(bundle.out, "bob")


def test_retire_site_key_moves_it_to_revoked(tmp_path: Path) -> None:
    bundle = init_consortium(tmp_path / "c", ["localhost"], [], ["a", "b"])
    text = (bundle.site_keys_dir / "a.pub").read_bytes()
    moved = certs.retire_site_key(bundle.out, "a")
    assert moved == bundle.out / "revoked" / "a.pub" and moved.read_bytes() == text
    assert sorted(p.name for p in bundle.site_keys_dir.iterdir()) == ["b.pub"]
    with pytest.raises(CertError, match="no such registered site key"):
        certs.retire_site_key(bundle.out, "a")


def test_cli_revoke_site_changes_nothing_when_the_server_does_not_answer(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fedclinic.cli import main
    from runtime.ports import free_port

    bundle = init_consortium(tmp_path / "c", ["localhost"], ["127.0.0.1"], ["a"])
    args = ["certs", "revoke-site", "--consortium", str(bundle.out), "--name", "a",
            "--server", f"127.0.0.1:{free_port()}"]
    assert main(args) == 1                                      # worth a retry
    assert "did not answer" in capsys.readouterr().err
    assert (bundle.site_keys_dir / "a.pub").exists()           # still registered here
    assert main([*args[:5], "nobody", *args[6:]]) == 2
    assert "no such registered site key" in capsys.readouterr().err
    bundle.operator_key.unlink()
    assert main(args) == 2
    assert "--operator-key" in capsys.readouterr().err


def test_ca_is_a_signing_only_ca(bundle: certs.CertBundle) -> None:
    ca = _cert(bundle.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and not usage.digital_signature
    key = serialization.load_pem_private_key(bundle.ca_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert key.public_key() == ca.public_key()
    # the CA outlives the 100-day server certificate
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= certs.CA_DAYS


def test_private_keys_are_0600_and_key_dirs_0700(bundle: certs.CertBundle) -> None:
    keys = [bundle.ca_key, bundle.server_key, bundle.operator_key, *(s.key for s in bundle.sites)]
    assert {_mode(k) for k in keys} == {0o600}
    dirs = [bundle.out / "ca", bundle.out / "server", bundle.out / "sites", bundle.out / "operator",
            *(s.key.parent for s in bundle.sites)]
    assert {_mode(d) for d in dirs} == {0o700}
    assert _mode(bundle.site_keys_dir) != 0o700   # public keys: the server's user reads them


def test_site_keys_are_openssh_p384_and_registered(bundle: certs.CertBundle) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    for site in bundle.sites:
        private = serialization.load_ssh_private_key(site.key.read_bytes(), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert isinstance(private.curve, ec.SECP384R1)
        public = serialization.load_ssh_public_key(site.pub.read_bytes())
        assert public == private.public_key()
        line = site.pub.read_text()
        assert line.startswith("ecdsa-sha2-nistp384 AAAA")
        assert line.endswith(f" {site.name}@fedclinic\n")
        assert site.registered.read_bytes() == site.pub.read_bytes()
        # Flower's own validator for `flwr supernode register` accepts it
        assert try_load_public_key(site.pub) == public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pubs = {s.pub.read_text().split()[1] for s in bundle.sites}
    assert len(pubs) == len(bundle.sites)


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = init_consortium(tmp_path, ["localhost"], [], ["a"])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(CertError, match=r"ca\.crt already exists.*--force"):
        init_consortium(tmp_path, ["localhost"], [], ["a"])
    # a refusal for one site's file leaves every file as it was (nothing half-written)
    (first.sites[0].key).unlink()
    with pytest.raises(CertError, match="--force"):
        init_consortium(tmp_path, ["localhost"], [], ["a"])
    assert not first.sites[0].key.exists()
    del before[first.sites[0].key]
    assert {p: p.read_bytes() for p in before} == before


def test_force_replaces_files_with_private_modes(tmp_path: Path) -> None:
    first = init_consortium(tmp_path, ["localhost"], [], ["a"])
    old_ca, old_key = first.ca_cert.read_bytes(), first.sites[0].key.read_bytes()
    first.sites[0].key.chmod(0o644)   # a lax old file must not pass its mode on
    second = init_consortium(tmp_path, ["localhost"], [], ["a"], force=True)
    assert second.ca_cert.read_bytes() != old_ca
    assert second.sites[0].key.read_bytes() != old_key
    assert _mode(second.sites[0].key) == 0o600
    _cert(second.server_cert).verify_directly_issued_by(_cert(second.ca_cert))


@pytest.mark.parametrize("bad", ["site 1", "../evil", "", "a/b", "café", "x.y"])
def test_bad_site_names_are_rejected(tmp_path: Path, bad: str) -> None:
    with pytest.raises(CertError, match=re.escape(repr(bad)) + ".*letters, digits"):
        init_consortium(tmp_path, ["localhost"], [], ["ok-1", bad])
    assert not any(tmp_path.iterdir())   # validated before anything is written
    with pytest.raises(CertError, match="letters, digits"):
        new_site_key(tmp_path, bad)


def test_duplicate_names_and_bad_server_addresses_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="'a' is given twice"):
        init_consortium(tmp_path, ["localhost"], [], ["a", "b", "a"])
    with pytest.raises(CertError, match="'10.0.0.5' is an IP address; pass it as --server-ip"):
        init_consortium(tmp_path, ["10.0.0.5"], [], ["a"])
    with pytest.raises(CertError, match="'300.1.1.1' is not an IPv4 or IPv6"):
        init_consortium(tmp_path, [], ["300.1.1.1"], ["a"])
    with pytest.raises(CertError, match="'bad_name!' is not a valid DNS name"):
        init_consortium(tmp_path, ["bad_name!"], [], ["a"])
    with pytest.raises(CertError, match="at least one --server-name or --server-ip"):
        init_consortium(tmp_path, [], [], ["a"])
    with pytest.raises(CertError, match="days=0"):
        init_consortium(tmp_path, ["localhost"], [], ["a"], days=0)
    assert not any(tmp_path.iterdir())


def test_hospital_key_then_registration(tmp_path: Path) -> None:
    consortium = init_consortium(tmp_path / "c", ["localhost"], ["127.0.0.1"], [])
    key, pub = new_site_key(tmp_path / "hospital", "charite")
    assert (key.name, pub.name, _mode(key), _mode(key.parent)) == (
        "charite.key", "charite.pub", 0o600, 0o700)
    with pytest.raises(CertError, match="charite.key already exists"):
        new_site_key(tmp_path / "hospital", "charite")

    site = add_site(consortium.out, "charite", public_key=pub)
    assert site.key is None   # the private key never left the hospital
    registered = serialization.load_ssh_public_key(site.registered.read_bytes())
    private = serialization.load_ssh_private_key(key.read_bytes(), None)
    assert registered == private.public_key()
    assert site.ca_cert.read_bytes() == consortium.ca_cert.read_bytes()
    with pytest.raises(CertError, match="already registered as site 'charite'"):
        add_site(consortium.out, "other", public_key=pub)
    with pytest.raises(CertError, match="charite.pub already exists.*--force"):
        add_site(consortium.out, "charite", public_key=pub)


def test_add_site_makes_a_key_pair_and_rejects_wrong_keys(tmp_path: Path) -> None:
    consortium = init_consortium(tmp_path / "c", ["localhost"], [], ["a"])
    site = add_site(consortium.out, "b")
    assert _mode(site.key) == 0o600
    private = serialization.load_ssh_private_key(site.key.read_bytes(), None)
    assert serialization.load_ssh_public_key(site.registered.read_bytes()) == \
        private.public_key()
    ed = tmp_path / "ed.pub"
    ed.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    with pytest.raises(CertError, match="not accepted; site keys must be EC keys on a NIST"):
        add_site(consortium.out, "c", public_key=ed)
    garbage = tmp_path / "x.pub"
    garbage.write_text("hello\n")
    with pytest.raises(CertError, match="not an OpenSSH public key"):
        add_site(consortium.out, "c", public_key=garbage)
    with pytest.raises(CertError, match="no ca/ca.crt"):
        add_site(tmp_path / "nowhere", "c")


def test_instructions_say_what_goes_where(bundle: certs.CertBundle) -> None:
    text = instructions(bundle)
    assert f"{bundle.out / 'server'}/" in text and str(bundle.site_keys_dir) in text
    for site in bundle.sites:
        assert f"{site.name}: {site.key.parent}/" in text
    assert "fedclinic certs site-key" in text and "offline" in text
    assert "e-mail" in text and str(bundle.ca_key) in text


# --- CLI -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedclinic")
    certs_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_cli_init_takes_repeated_and_comma_lists(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    args = _parser().parse_args(["certs", "init", "--out", str(tmp_path / "c"),
                                 "--server-name", "a.example.org,b.example.org",
                                 "--server-name", "server", "--server-ip", "",
                                 "--sites", "x, y", "--days", "30"])
    assert certs_cli.run(args) == 0
    server = _cert(tmp_path / "c" / "server" / "server.crt")
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example.org", "b.example.org", "server"]
    assert san.get_values_for_type(x509.IPAddress) == []
    assert sorted(p.name for p in (tmp_path / "c" / "site-keys").iterdir()) == ["x.pub", "y.pub"]
    assert "Never send any .key file" in capsys.readouterr().out
    assert certs_cli.run(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert certs_cli.run(_parser().parse_args(["certs", "init"])) == 0
    out = tmp_path / "fedclinic-certs"
    san = _cert(out / "server" / "server.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sorted(p.name for p in (out / "sites").iterdir()) == ["site-0", "site-1", "site-2"]
    assert certs_cli.run(_parser().parse_args(["certs", "site-key", "--name", "h"])) == 0
    assert _mode(tmp_path / "h.key") == 0o600
    assert certs_cli.run(_parser().parse_args(["certs", "add-site", "--name", "h",
                                           "--public-key", "h.pub"])) == 0
    assert (out / "site-keys" / "h.pub").read_bytes() != b""


def _actions(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _actions(sub)
    return found


def test_every_certs_option_help_ends_with_its_default() -> None:
    for parser in _actions(_parser()):
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS \
                    and "--help" not in action.option_strings:
                assert re.search(r"\(default: [^)]+\)$", action.help), (parser.prog,
                                                                        action.option_strings)


# --- deploy/ files ---------------------------------------------------------------------------


def _compose() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())


def test_compose_has_one_server_and_three_sites() -> None:
    services = _compose()["services"]
    commands = {name: [str(t) for t in svc["command"]] for name, svc in services.items()}
    servers = [n for n, c in commands.items() if c[0] == "server"]
    sites = [n for n, c in commands.items() if c[0] == "site"]
    assert len(servers) == 1 and len(sites) == 3 and len(services) == 4
    server = servers[0]
    ids, keys = set(), set()
    for name in sites:
        cmd = commands[name]
        assert cmd[cmd.index("--server") + 1] == f"{server}:8000"  # SAN 'server' in the guide
        ids.add(cmd[cmd.index("--site-id") + 1])
        keys.add(cmd[cmd.index("--site-key") + 1])
        mounts = services[name]["volumes"]
        assert any(m.endswith(":/data:ro") for m in mounts), mounts   # data read-only
        assert services[name]["depends_on"][server]["condition"] == "service_healthy"
        assert any(f"sites/{name}:" in m for m in mounts)   # only its own key
        assert cmd[cmd.index("--site-id") + 1] == name.removeprefix("site-")  # site-N: id N
        assert cmd[cmd.index("--site-key") + 1] == f"/certs/{name}.key"
        assert services[name]["restart"] == "no"      # the entrypoint restarts, not Docker
    assert ids == {"0", "1", "2"} and len(keys) == 3
    build = services[server]["build"]
    assert (DEPLOY / "compose" / build["context"] / build["dockerfile"]).resolve() == \
        (DEPLOY / "compose" / "Dockerfile").resolve()


def test_dockerfile_installs_cpu_torch_before_fedclinic() -> None:
    text = (DEPLOY / "compose" / "Dockerfile").read_text()
    torch = re.search(r"^RUN pip install .*download\.pytorch\.org/whl/cpu torch==\S+", text, re.M)
    fedclinic = re.search(r"^RUN pip install \.", text, re.M)
    assert torch and fedclinic and torch.start() < fedclinic.start()
    pinned = re.search(r'"torch==([\d.]+)"', (DEPLOY.parent / "pyproject.toml").read_text())
    assert f"torch=={pinned[1]}" in torch[0]   # the same pin, so pip keeps the CPU build
    assert re.search(r"^USER fedclinic", text, re.M)
    assert "deploy/compose/certs" in (DEPLOY / "compose" / "Dockerfile.dockerignore").read_text()


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str   # systemd keys are case-sensitive
    parser.read(DEPLOY / "systemd" / name)
    return parser


@pytest.mark.parametrize("unit", ["fedclinic-server.service", "fedclinic-site.service"])
def test_systemd_units_are_hardened(unit: str) -> None:
    service = _unit(unit)["Service"]
    assert service["Restart"] == "on-failure"
    assert service["User"] == "fedclinic"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["CapabilityBoundingSet"] == ""
    assert "/var/lib/" in service["ReadWritePaths"]
    assert service["Environment"]  # HOME/FLWR_HOME point into the state directory


def test_site_unit_reads_data_read_only_and_uses_the_env_file() -> None:
    service = _unit("fedclinic-site.service")["Service"]
    env_vars = dict(line.split("=", 1) for line in
                    (DEPLOY / "fedclinic.env.example").read_text().splitlines()
                    if line.strip() and not line.lstrip().startswith("#"))
    required = {"FEDCLINIC_SERVER", "FEDCLINIC_CA_CERT", "FEDCLINIC_SITE_KEY",
                "FEDCLINIC_SITE_ID", "FEDCLINIC_DATA", "FEDCLINIC_STATE", "FEDCLINIC_POLICY",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"}
    assert set(env_vars) == required
    assert env_vars["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    used = set(re.findall(r"\$\{(\w+)\}", service["ExecStart"]))
    assert used <= set(env_vars) and len(used) == 7
    assert env_vars["FEDCLINIC_DATA"] in service["ReadOnlyPaths"].split()
    assert env_vars["FEDCLINIC_STATE"] in service["ReadWritePaths"].split()


def _fedclinic_commands(text: str, top: set[str]) -> list[list[str]]:
    """Every `fedclinic <command> ...` invocation in shell-like text (continuations joined)."""
    found = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        for i, token in enumerate(tokens[:-1]):
            if os.path.basename(token) == "fedclinic" and tokens[i + 1] in top:
                rest = tokens[i + 1:]
                ends = [j for j, t in enumerate(rest) if t in {"|", "||", "&&", ";", ">"}]
                found.append(rest[:ends[0]] if ends else rest)
    return found


def _code_blocks(markdown: str) -> str:
    return "\n".join(re.findall(r"^```[a-z]*\n(.*?)^```", markdown, re.M | re.S))


def _unknown_flags(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    bad, current = [], parser
    for token in argv:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and token in subs[0].choices:
            current = subs[0].choices[token]
        elif token.startswith("--") and token.split("=")[0] not in current._option_string_actions:
            bad.append(f"{token} (in `fedclinic {' '.join(argv)}`)")
    return bad


def test_every_fedclinic_flag_in_the_deploy_files_exists() -> None:
    from fedclinic.cli import build_parser

    parser = build_parser()
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if "server" not in top:
        pytest.skip("fedclinic.cli has no `server` command yet (the server/site/run commands "
                    "are added separately); the deploy files use them")
    sources = {"GUIDE.md": _code_blocks((DEPLOY / "GUIDE.md").read_text()),
               "systemd": "\n".join(p.read_text() for p in (DEPLOY / "systemd").glob("*")),
               "compose": "\n".join(shlex.join(["fedclinic", *map(str, svc["command"])])
                                    for svc in _compose()["services"].values())}
    bad, seen = [], set()
    for where, text in sources.items():
        commands = _fedclinic_commands(text, set(top))
        assert commands, f"no fedclinic commands found in {where}"
        for argv in commands:
            seen.add(argv[0])
            bad += [f"{where}: {b}" for b in _unknown_flags(parser, argv)]
    assert not bad, "\n".join(bad)
    assert {"server", "site", "run", "certs"} <= seen
