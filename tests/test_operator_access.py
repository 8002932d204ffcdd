"""Only the operator changes the federation (issue 15, items 1 and 2).

A real consortium on loopback (deploy/loopback.py: `fedclinic server` + three `fedclinic site`
processes, TLS and site keys from `fedclinic certs`, free ports, teardown by process group):
a party holding only ca.crt can neither submit a run nor register a key, a site key or a
certificate without the operator role cannot submit, the operator can, and a site revoked while
a run goes on is refused from its next round. The unit tests at the top need no processes.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.config import RunConfig
from deploy import certs as deploy_certs
from deploy.certs import init_consortium, new_site_key
from deploy.loopback import Loopback, wait_until
from server import operator_role
from server.fleet_filter import allowed

RUN = ("--sites", "3", "--model", "cnn", "--width", "4", "--num-samples", "240",
       "--local-epochs", "1", "--batch-size", "32")
TEST_POLICY = """\
require_dp = false
max_epsilon_per_run = 8.0
lifetime_epsilon = 1000.0
train_loss = "exact"
test_metrics = "exact"
"""


def _der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
        serialization.Encoding.DER)


def _client_cert(certs: Path, out: Path, *, unit: str | None, eku: list | None,
                 key: ec.EllipticCurvePrivateKey | None = None, self_signed: bool = False
                 ) -> tuple[Path, Path]:
    """A client certificate for the tests: signed by the consortium CA (or by its own key)."""
    ca_key = serialization.load_pem_private_key((certs / "ca" / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((certs / "ca" / "ca.crt").read_bytes())
    key = key or ec.generate_private_key(ec.SECP384R1())
    names = [x509.NameAttribute(NameOID.COMMON_NAME, out.name)]
    if unit:
        names.insert(0, x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    subject, now = x509.Name(names), dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(subject if self_signed else ca.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=2)))
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    cert = builder.sign(key if self_signed else ca_key, hashes.SHA384())
    out.mkdir(parents=True, exist_ok=True)
    (out / "c.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "c.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return out / "c.crt", out / "c.key"


# --- no processes ----------------------------------------------------------------------------


def test_only_the_certificate_certs_init_writes_has_the_operator_role(tmp_path):
    assert deploy_certs.OPERATOR_ROLE == operator_role.OPERATOR_ROLE   # writer and checker agree
    bundle = init_consortium(tmp_path / "c", ["localhost"], ["127.0.0.1"], ["site-0"])
    assert operator_role.operator_name(_der(bundle.operator_cert)) == "operator"
    assert bundle.operator_key.stat().st_mode & 0o777 == 0o600
    with pytest.raises(operator_role.NotOperator, match="not for client authentication"):
        operator_role.operator_name(_der(bundle.server_cert))
    no_eku, _ = _client_cert(bundle.out, tmp_path / "no-eku", unit="operator", eku=None)
    with pytest.raises(operator_role.NotOperator, match="no extended key usage"):
        operator_role.operator_name(_der(no_eku))
    site, _ = _client_cert(bundle.out, tmp_path / "site", unit="site-0",
                           eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    with pytest.raises(operator_role.NotOperator, match="OU=\\['site-0'\\]"):
        operator_role.operator_name(_der(site))
    cert, key = deploy_certs.issue_operator(bundle.out, "alice", days=30)
    assert operator_role.operator_name(_der(cert)) == "alice" and key.exists()


def test_the_sites_port_forwards_the_fleet_api_only():
    assert allowed("POST", "/v1/fleet/pull-messages")
    for method, path in (("POST", "/v1/control/start-run"), ("POST", "/v1/runtime/acquire-task"),
                         ("POST", "/v1/control/register-node"), ("GET", "/v1/fleet/get-run"),
                         ("POST", "/v1/fleet/../control/start-run"), ("GET", "/docs")):
        assert not allowed(method, path), path


def test_a_changed_flower_stops_the_server_with_a_clear_error(monkeypatch):
    from server import flower_contract

    flower_contract.check_flower()                     # the installed Flower: as checked
    monkeypatch.setattr(flower_contract.importlib.metadata, "version", lambda _: "1.42.0")
    with pytest.raises(flower_contract.FlowerChanged, match="Flower 1.42.0.*operator gate"):
        flower_contract.check_flower()


class _FakeControl:
    """Flower's node registry as the Control API shows it (ListNodes, RegisterNode,
    UnregisterNode), in memory."""

    def __init__(self) -> None:
        self.nodes: list = []

    def ListNodes(self, _request):  # noqa: N802 - Flower's names
        from flwr.proto.control_pb2 import ListNodesResponse  # pylint: disable=E0611
        return ListNodesResponse(nodes_info=self.nodes)

    def RegisterNode(self, request):  # noqa: N802
        from flwr.proto.control_pb2 import RegisterNodeResponse  # pylint: disable=E0611
        from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611
        if any(n.public_key == request.public_key for n in self.nodes):
            raise ValueError("Public key already in use")      # Flower stores a key once
        self.nodes.append(NodeInfo(node_id=len(self.nodes) + 1, name=request.name,
                                   public_key=request.public_key, status="registered"))
        return RegisterNodeResponse(node_id=len(self.nodes))

    def UnregisterNode(self, request):  # noqa: N802
        node = next(n for n in self.nodes if n.node_id == request.node_id)
        node.status = "unregistered"


def test_the_site_keys_folder_is_the_truth_when_the_server_starts(tmp_path):
    from server.enrollment import revoke_site, sync_sites

    bundle = init_consortium(tmp_path / "c", ["localhost"], [], ["a", "b", "c"])
    control, said = _FakeControl(), []
    assert sync_sites(control, bundle.site_keys_dir, said.append) == {"a": 1, "b": 2, "c": 3}
    assert revoke_site(control, bundle.site_keys_dir / "b.pub") == 2
    with pytest.raises(Exception, match="revoked it before"):
        revoke_site(control, bundle.site_keys_dir / "b.pub")
    (bundle.site_keys_dir / "c.pub").unlink()              # removed while the server was down
    said.clear()
    assert sync_sites(control, bundle.site_keys_dir, said.append) == {"a": 1}
    assert [n.status for n in control.nodes] == ["registered", "unregistered", "unregistered"]
    assert any("site b stays refused" in line for line in said)
    assert any("revoked site c" in line for line in said)


# --- a consortium of real processes ----------------------------------------------------------


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    from simulations.export import export_sites

    root = tmp_path_factory.mktemp("operator")
    init_consortium(root / "certs", ["localhost"], ["127.0.0.1"], ["site-0", "site-1", "site-2"])
    data = export_sites(RunConfig(sites=3, num_samples=240), root / "data")
    lb = Loopback(root / "run", root / "certs", data, policy=root / "test-policy.toml")
    lb.policy.write_text(TEST_POLICY)
    lb.root.mkdir()
    lb.start_server()
    for i in range(3):
        lb.start_site(i)
    for i in range(3):
        lb.wait_site_connected(i)
    yield lb
    lb.close()


def _refused(call) -> str:
    with pytest.raises(httpx.HTTPStatusError) as caught:
        call()
    assert caught.value.response.status_code == 403
    return json.loads(caught.value.response.text)["detail"]


def _node_keys(lb: Loopback) -> dict[str, str]:
    from server.control import connect, list_site_nodes

    control = connect(lb.address, lb.certs / "ca" / "ca.crt", lb.operator_cert)
    try:
        return {bytes(n.public_key).hex(): n.status for n in list_site_nodes(control)}
    finally:
        control.close()


def _fedclinic(capsys, *args: str) -> tuple[int, str]:
    """`fedclinic ARGS` in this process (the server is the real one): (exit code, stderr)."""
    from fedclinic.cli import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


def _run(lb: Loopback, capsys, *login: str) -> tuple[int, str]:
    return _fedclinic(capsys, "run", "--server", lb.address, *login, *RUN, "--rounds", "1")


def test_a_party_with_only_ca_crt_can_neither_submit_nor_register(consortium, capsys):
    from flwr.proto.control_pb2 import ListNodesRequest  # pylint: disable=E0611

    from server.control import connect, public_key_bytes, register_site_key, start_run

    lb = consortium
    code, said = _run(lb, capsys, "--ca-cert", str(lb.ca_only()))  # the command says why
    assert code == 2 and "--operator-cert" in said and "certs init" in said, said
    _, stranger = new_site_key(lb.root / "stranger", "stranger")
    control = connect(lb.address, lb.ca_only(), operator=False)     # Flower's client, ca.crt only
    try:
        said = _refused(lambda: start_run(control, {"rounds": 1}))
        assert "operator" in said and "Fleet API only" in said
        _refused(lambda: register_site_key(control, stranger, "site-9"))
        _refused(lambda: control.ListNodes(ListNodesRequest()))
    finally:
        control.close()
    with httpx.Client(verify=str(lb.ca_only())) as raw:    # nor the ServerApp's Runtime API
        reply = raw.post(f"https://{lb.address}/v1/runtime/acquire-task", content=b"")
        assert reply.status_code == 403
    assert lb.run_dirs() == []
    assert public_key_bytes(stranger).hex() not in _node_keys(lb)


def test_a_site_key_or_a_certificate_without_the_operator_role_cannot_submit(consortium, capsys):
    lb = consortium
    site, ca = lb.certs / "sites" / "site-0", str(lb.certs / "ca" / "ca.crt")

    def submit(cert: Path, key: Path) -> tuple[int, str]:
        return _run(lb, capsys, "--ca-cert", ca, "--operator-cert", str(cert),
                    "--operator-key", str(key))

    code, said = submit(site / "site-0.pub", site / "site-0.key")  # a site key: no certificate
    assert code == 2 and "not a PEM certificate" in said, said
    site_key = serialization.load_ssh_private_key((site / "site-0.key").read_bytes(), None)
    forged = _client_cert(lb.certs, lb.root / "forged", unit="operator",
                          eku=[ExtendedKeyUsageOID.CLIENT_AUTH], key=site_key, self_signed=True)
    code, said = submit(*forged)                                   # not signed by the CA
    assert code == 2 and "refused the TLS connection" in said, said
    server = lb.certs / "server"
    code, said = submit(server / "server.crt", server / "server.key")   # serverAuth only
    assert code == 2 and "refused the TLS connection" in said, said
    site_cert = _client_cert(lb.certs, lb.root / "site-cert", unit="site-0",
                             eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    code, said = submit(*site_cert)                                # CA-signed, role: a site
    assert code == 2 and "refused to start a run" in said and "OU=['site-0']" in said, said
    assert lb.run_dirs() == []
    server_said = lb.output("server")
    assert "refused 127.0.0.1: certificate CN=site-cert" in server_said
    assert server_said.count("refused a client certificate from 127.0.0.1") >= 2


def _revoke_now(lb: Loopback, site: str) -> int:
    """Revoke `site` as the operator, in this process (no command start-up: the moment is known)."""
    from server.control import connect
    from server.enrollment import revoke_site

    control = connect(lb.address, lb.certs / "ca" / "ca.crt", lb.operator_cert)
    try:
        return revoke_site(control, lb.certs / "site-keys" / f"{site}.pub")
    finally:
        control.close()


@pytest.mark.slow   # ~65 s on 2 cores: a run, a revocation, the next round (CI: `-m slow`)
def test_the_operator_submits_and_a_revoked_site_is_refused_from_its_next_round(consortium,
                                                                               capsys):
    lb = consortium
    lb.submit(*RUN, "--rounds", "5", "--min-sites", "2", "--round-timeout", "30")
    run_dir = wait_until(lambda: next(iter(lb.run_dirs()), None), 300, "the run directory")
    wait_until(lambda: 1 in lb.rounds_done(run_dir), 600, "round 1")
    _revoke_now(lb, "site-2")                            # while round 2 may be under way
    in_progress = max(lb.rounds_done(run_dir)) + 1
    assert lb.processes["run"].wait(600) == 0, lb.latest_output("run")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [0, 1, 2, 3, 4, 5]
    assert sorted(lines[1]["sites"]) == ["0", "1", "2"]
    later = [line for line in lines if line["round"] > in_progress]
    assert later and all(sorted(line["sites"]) == ["0", "1"] for line in later), \
        [(line["round"], sorted(line["sites"])) for line in lines]
    refused = [line for line in (lb.server_state / "superlink.log").read_text().splitlines()
               if "/v1/fleet/" in line and '" 401' in line]      # the site's next requests
    assert refused, "the revoked site's requests were not refused"
    assert "operator 'operator' connected" in lb.output("server")
    # issue 15 item 5: the server says what happened, naming sites and the operator
    server_said = lb.output("server")
    assert re.search(r"run \d+ submitted by operator 'operator'", server_said), server_said
    assert re.search(r"site site-2 \(node \d+\) revoked by operator 'operator'", server_said)
    assert re.search(r"site site-0 \(node \d+\) connected", server_said), server_said
    assert re.search(rf"run \d+ \({run_dir.name}\) started", server_said), server_said
    assert re.search(rf"run \d+ \({run_dir.name}\) finished: completed", server_said)
    follower = lb.latest_output("run")             # fedclinic run: names, no raw Flower lines
    assert f"run name {run_dir.name}" in follower and "\x1b[" not in follower
    assert "INFO" not in follower and "Received error in reply" not in follower, follower
    assert "excluded: site-2" in follower, follower
    # item 6: the report of a deployed run says what it knows, not the default config
    report = (run_dir / "report.md").read_text()
    assert report.startswith("# fedclinic deployed run: 3 sites (site-0, site-1, site-2)")
    assert "synthetic" not in report.splitlines()[0] and "partition `iid`" not in report
    assert "No global test set" in report and "baselines use" not in report
    assert re.search(r"- round \d+: site-2 \(train\): ", report), report
    # the operator's command: site-1 revoked on the running server, its key file retired
    revoke = ("certs", "revoke-site", "--consortium", str(lb.certs), "--server", lb.address)
    code, said = _fedclinic(capsys, *revoke, "--name", "site-1")
    assert code == 0, said
    assert not (lb.certs / "site-keys" / "site-1.pub").exists()
    assert (lb.certs / "revoked" / "site-1.pub").exists()
    assert sorted(_node_keys(lb).values()).count("unregistered") == 2
    code, said = _fedclinic(capsys, *revoke, "--name", "site-2")   # revoked before
    assert code == 2 and "revoked it before" in said, said
