"""What the server and `fedclinic run` say, what a deployed report says, and the deploy files'
restart rule and naming scheme (issue 15, items 5-7): the parts that need no processes.
The same behaviour with real processes is in tests/test_operator_access.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from common.config import RunConfig
from common.report.deployment import Deployment, RunPart, deployment_lines, deployment_title
from common.site_names import default_names, site_name, site_number
from server import run_events
from server.events import ServerEvents
from server.service import OperatorLogin, lost_server, resume_command, run_line

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KEY = b"-----BEGIN PUBLIC KEY-----\nMHYw\n-----END PUBLIC KEY-----\n"


class _Node:
    def __init__(self, node_id, name, status, key=b""):
        self.node_id, self.name, self.status, self.public_key = node_id, name, status, key


class _Registry:
    """Flower's node registry as ListNodes shows it."""

    def __init__(self, nodes):
        self.nodes = nodes

    def ListNodes(self, _request):  # noqa: N802 - Flower's name
        return type("R", (), {"nodes_info": self.nodes})()

    def close(self):
        pass


def test_the_server_prints_one_line_per_site_and_run_event_naming_sites(tmp_path):
    said: list[str] = []
    registry = _Registry([_Node(11, "site-0", "registered", KEY),
                          _Node(12, "site-1", "registered")])
    log = tmp_path / "superlink.log"
    log.write_text("INFO :      old line from before the start: [Fleet.ActivateNode] "
                   "Activated node_id=11\n")
    events = ServerEvents(tmp_path, lambda: registry, said.append)
    events.poll_registry(announce=False)
    names = json.loads((tmp_path / "site-names.json").read_text())
    assert names["11"] == {"name": "site-0", "status": "registered"}

    events.operator_request("alice", "/v1/control/start-run")
    stranger = repr(b"-----BEGIN PUBLIC KEY-----\nZZZ")
    with open(log, "a") as out:
        out.write("\x1b[92mINFO \x1b[0m:      [Fleet.ActivateNode] Activated node_id=11\n"
                  "INFO :      Created run 77 in federation @none/default\n"
                  f"ERROR :     [/v1/fleet/activate-node][ApiError:2004] Attempted to register "
                  f"SuperNode with public key: {stranger}, "
                  f"exception: No SuperNode found with the given public key.\n"
                  '2026 INFO [uvicorn.access] 127.0.0.1:5 - "POST /v1/fleet/pull-messages '
                  'HTTP/1.1" 401\n'
                  "INFO :      [Fleet.DeactivateNode] Deactivated node_id=11\n")
    events.read_log()
    registry.nodes[1].status = "online"
    events.poll_registry()
    registry.nodes[1].status = "offline"                     # no sign-off: heartbeats missed
    events.operator_request("alice", "/v1/control/unregister-node")
    registry.nodes[0].status = "unregistered"
    events.poll_registry()
    (tmp_path / "run-events.jsonl").write_text("\n".join(json.dumps(e) for e in [
        {"event": "started", "run_id": 77, "run_name": "R1", "rounds": 5, "sites": 2},
        {"event": "refused", "run_id": 77, "run_name": "R1", "site": "site-1",
         "reason": "policy-refused: require_dp"},
        {"event": "resumed", "run_id": 78, "run_name": "R1", "after_round": 2, "rounds": 5},
        {"event": "finished", "run_id": 78, "run_name": "R1", "outcome": "completed, 5 rounds"},
    ]) + "\n")
    events.read_events()
    text = "\n".join(said)
    assert "old line" not in text and said.count("fedclinic server: site site-0 (node 11) "
                                                 "connected") == 1
    assert "run 77 submitted by operator 'alice'" in text
    assert "refused key sha256:" in text and "not registered" in text
    assert "refused a site's request (401" in text
    assert "site site-0 (node 11) dropped: it signed off" in text
    assert "site site-1 (node 12) connected" in text
    assert "site site-1 (node 12) dropped: no heartbeat" in text
    assert "site site-0 (node 11) revoked by operator 'alice'" in text
    assert "run 77 (R1) started: rounds 1..5, 2 sites" in text
    assert "run 77 (R1): site site-1 refused: policy-refused: require_dp" in text
    assert "run 78 (R1) resumed after round 2; rounds 3..5 follow" in text
    assert "run 78 (R1) finished: completed, 5 rounds" in text
    assert all(line.startswith("fedclinic server: ") and "\x1b" not in line for line in said)


def test_fedclinic_run_shows_its_own_lines_without_flower_or_colour_codes():
    assert run_line("\x1b[92mINFO \x1b[0m:      [round 2/5] global acc 0.5 | excluded: "
                    "site-2 | 3.1s") == "[round 2/5] global acc 0.5 | excluded: site-2 | 3.1s"
    assert run_line("fedclinic: run directory /s/runs/R1") == "fedclinic: run directory /s/runs/R1"
    for flower in ("\x1b[92mINFO \x1b[0m:      \t> Received error in reply from node 1: "
                   "Error: Node Unavailable", "INFO :      [ROUND 1/5]",
                   "Successfully installed fedclinic-app to /x",
                   "INFO :  ConfigRecord (train): {'fedclinic-run': 'R1'}", ""):
        assert run_line(flower) is None, flower
    assert run_line("ERROR :  RuntimeError: round 2: every site failed") is not None


def test_losing_the_server_names_the_run_and_the_exact_resume_command(tmp_path):
    login = OperatorLogin(Path("c/ca/ca.crt"), Path("c/operator/operator.crt"),
                          Path("my key.pem"))
    said = lost_server("fl:8000", login, 7, "20261201-run", "connection refused")
    assert "run 7 (20261201-run)" in said and "connection refused" in said
    assert said.endswith("fedclinic run --server fl:8000 --ca-cert c/ca/ca.crt --operator-cert "
                         "c/operator/operator.crt --operator-key 'my key.pem' --resume "
                         "20261201-run")
    assert resume_command("h:1", None, "R").endswith("--insecure --resume R")
    assert "submit the run again" in lost_server("fl:8000", login, 7, "", "reset")


def test_a_deployed_report_says_what_the_server_knows_and_lists_interruptions():
    dep = Deployment(sites={"0": "site-0", "1": "site-1"},
                     declared={"site-0": {"layout": "medmnist", "task_kind": "multiclass",
                                          "samples": {"train": 56, "test": 16},
                                          "labels": {"train": {"0": 30, "1": 26}}}},
                     parts=(RunPart(1000.0, 1, 2, 1060.0),
                            RunPart(1200.0, 3, 5, 1290.0, resumed=True, ended_at=1300.0,
                                    outcome="completed, 5 rounds")))
    assert deployment_title(RunConfig(), dep) == (
        "# fedclinic deployed run: 2 sites (site-0, site-1), medmnist data declared by the sites")
    text = "\n".join(deployment_lines(dep))
    assert "- site-0: medmnist, multiclass, 56 train / 16 test, labels 0: 30, 1: 26" in text
    assert "No global test set" in text and "Evaluation is per site" in text
    assert "## Interruptions and resumes" in text and "2 parts" in text
    assert "**interrupted** after round 2" in text and "- part 2: resumed" in text
    assert dep.wall_seconds == pytest.approx(160.0)          # 60 s + 100 s, not 300 s
    held_out = Deployment(global_test="/srv/test.npz (600 samples)")
    assert "Global test set: /srv/test.npz (600 samples), held out by the operator" in \
        "\n".join(deployment_lines(held_out))


def test_a_run_records_its_parts_in_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(run_events.EVENTS_ENV, str(tmp_path / "events.jsonl"))
    monkeypatch.setenv(run_events.SITE_NAMES_ENV, str(tmp_path / "names.json"))
    run_events.write_site_names(tmp_path / "names.json", {5: "site-0"}, {5: "online"})
    run_events.part_started(tmp_path, 1, resumed=False)
    run_events.part_progress(tmp_path, 1)
    run_events.part_started(tmp_path, 2, resumed=True)        # the server died after round 1
    run_events.part_progress(tmp_path, 2)
    run_events.part_finished(tmp_path, "completed, 2 rounds")
    dep = run_events.deployment(tmp_path, {5: 0})
    assert [(p.first_round, p.last_round, p.resumed, p.ended_at is None) for p in dep.parts] \
        == [(1, 1, False, True), (2, 2, True, False)]
    assert dep.sites == {"0": "site-0"}
    run_events.bind(9, "R")
    run_events.emit("started", rounds=2)
    assert json.loads((tmp_path / "events.jsonl").read_text())["run_name"] == "R"


def test_one_naming_scheme_for_sites():
    from deploy.certs import DEFAULT_SITES

    assert DEFAULT_SITES.split(",") == default_names(3) == ["site-0", "site-1", "site-2"]
    assert site_name(2) == "site-2" and site_number("site-2") == 2
    assert site_number("charite") is None


def test_the_container_entrypoint_restarts_after_1_and_never_after_2(tmp_path):
    fake = tmp_path / "bin" / "fedclinic"
    fake.parent.mkdir()
    calls = tmp_path / "calls"
    fake.write_text(f"#!/bin/sh\necho x >> {calls}\n"
                    f"[ $(wc -l < {calls}) -lt 3 ] && exit 1\nexit 2\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}",
           "FEDCLINIC_RESTART_SECONDS": "0"}
    done = subprocess.run(["sh", str(DEPLOY / "compose" / "entrypoint.sh"), "site"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and calls.read_text().count("x") == 3     # 1, 1, then 2: stop
    assert "not restarting" in done.stderr
    dockerfile = (DEPLOY / "compose" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["fedclinic-entrypoint"]' in dockerfile
    assert "COPY runtime ./runtime" in dockerfile      # every package fedclinic imports


def test_a_deployed_site_table_names_sites_and_shows_no_empty_columns():
    from common.report.tables import sites_table

    summary = {"federated": {"sites": {"0": {"accuracy": 0.5, "auc": 0.6}}, "global": {}},
               "site_counts": {}, "deployment": {"sites": {"0": "site-0"}}}
    table = sites_table(summary)
    assert table.splitlines()[0] == "| site | federated acc | federated AUC |"
    assert "| 0 (site-0) | 0.500 | 0.600 |" in table and "global test" not in table


@pytest.mark.parametrize("unit", ["fedclinic-server.service", "fedclinic-site.service"])
def test_systemd_does_not_restart_after_exit_2(unit):
    import configparser

    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(DEPLOY / "systemd" / unit)
    service = parser["Service"]
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"


def test_a_deployed_run_that_no_site_trained_still_gets_its_report(tmp_path):
    """Every site refused the run and there is no global test set: nothing to plot, and the
    report is written all the same (it said 'number sections must be larger than 0')."""
    from common.report.record import RunRecord
    from common.report.writer import write_report

    history = [{"round": 0, "seconds": 0.0, "global": {}, "sites": {}, "failures": {}},
               {"round": 1, "seconds": 1.0, "global": {}, "sites": {},
                "failures": {"site-0 (train)": "policy-refused: require_dp: ..."}}]
    record = RunRecord(config=RunConfig(), history=history, wall_seconds=1.0,
                       deployment=Deployment(sites={}), stopped_early="no site is left")
    write_report(tmp_path, record)
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# fedclinic deployed run:") and "site-0 (train)" in report
