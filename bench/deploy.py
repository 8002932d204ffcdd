"""Deployment cost per round: bytes each site sends, and where a round's time goes.

Runs the default model (ResNet-18, GroupNorm, width 16, 28 px synthetic) three ways with the
same data and settings:

* `resident`: `fedclinic server` + 3 `fedclinic site` processes on loopback over TLS, sites run
  tasks in their warm executor (fedclinic's way);
* `flower-subprocess`: the same server, sites as plain `flower-supernode` with Flower's default
  isolation, which starts a fresh `flwr-clientapp` process per message (imports every time);
* `simulation`: Flower's Ray simulation engine in one process tree.

Per round it splits the server's wall time into train (slowest site's ClientApp time), transfer +
scheduling (the rest of the train phase: queueing, serialization, network, process start),
aggregation, and the evaluate phase. Per site it reports the bytes of each reply (from the site's
audit log). Writes bench/results/deploy.json and prints a one-line summary.

    .venv/bin/python -m bench.deploy [--rounds 3] [--modes resident flower-subprocess simulation]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import rundir
from common.config import RunConfig
from deploy.certs import init_consortium
from deploy.loopback import Loopback, wait_until
from runtime.environment import flower_env
from runtime.ports import free_port
from runtime.processes import kill_group
from simulations.export import export_sites

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("resident", "flower-subprocess", "simulation")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def round_breakdown(history: list[dict]) -> list[dict]:
    """Per training round: train / transfer+scheduling / aggregate / evaluate seconds."""
    rows = []
    for line in history:
        timing = line.get("timing")
        if not timing:
            continue
        clients = [s["train"].get("client_seconds", 0.0) for s in line["sites"].values()
                   if s["train"]]
        slowest = max(clients) if clients else 0.0
        rows.append({"round": line["round"], "train_wall": timing["train_wall"],
                     "slowest_site_clientapp": round(slowest, 3),
                     "transfer_and_scheduling": round(timing["train_wall"] - slowest, 3),
                     "aggregate": timing["aggregate"], "evaluate_wall": timing["evaluate_wall"]})
    return rows


def summarize(rows: list[dict]) -> dict:
    later = rows[1:] or rows          # round 1 includes one-off start-up (imports, FAB install)
    return {"rounds": rows,
            "median_transfer_and_scheduling_later_rounds": round(statistics.median(
                r["transfer_and_scheduling"] for r in later), 3),
            "first_round_transfer_and_scheduling": rows[0]["transfer_and_scheduling"],
            "median_train_wall_later_rounds": round(statistics.median(
                r["train_wall"] for r in later), 3),
            "median_aggregate": round(statistics.median(r["aggregate"] for r in rows), 4)}


def bytes_per_site(lb: Loopback, sites: int) -> dict:
    out = {}
    for i in range(sites):
        entries = [e for e in _lines(lb.site_state(i) / "audit.jsonl") if e["event"] == "reply"]
        run = entries[-1]["run_id"]
        mine = [e for e in entries if e["run_id"] == run]
        timing = [e for e in _lines(lb.site_state(i) / "audit.jsonl")
                  if e["event"] == "timing" and e["run_id"] == run]
        out[str(i)] = {"train_reply_bytes": [e["bytes"] for e in mine if e["type"] == "train"],
                       "evaluate_reply_bytes": [e["bytes"] for e in mine
                                                if e["type"] == "evaluate"],
                       "site_task_overhead_seconds": [round(t["task"] - t["app"], 3)
                                                      for t in timing],
                       "site_pull_seconds": [t["pull"] for t in timing],
                       "site_push_and_audit_seconds": [round(t["task"] - t["pull"] - t["app"], 3)
                                                       for t in timing]}
    return out


def _flower_site(lb: Loopback, i: int) -> subprocess.Popen:
    """A site as Flower runs it by default: a fresh flwr-clientapp process per message."""
    from client.service import node_config

    state = lb.site_state(i)
    state.mkdir(parents=True, exist_ok=True)
    site_dir = lb.certs / "sites" / f"site-{i}"
    command = [str(Path(sys.executable).with_name("flower-supernode")), "--superlink",
               lb.address, "--root-certificates", str(site_dir / "ca.crt"),
               "--auth-supernode-private-key", str(site_dir / f"site-{i}.key"),
               "--port", str(free_port()), "--node-config", node_config(lb.data[i], i, state)]
    env = flower_env(state / "flwr-home")
    env["FEDCLINIC_CLIENT_THREADS"] = "1"
    with open(state / "flower-supernode.out", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=state, start_new_session=True)
    lb.processes[f"flower-site-{i}"] = process
    return process


def deployed(mode: str, root: Path, certs: Path, data: list[Path], options: list[str]) -> dict:
    lb = Loopback(root / mode, certs, data)
    lb.root.mkdir(parents=True)
    try:
        lb.start_server()
        for i in range(len(data)):
            if mode == "resident":
                lb.start_site(i)
                lb.wait_site_connected(i)
            else:
                _flower_site(lb, i)
        start = time.perf_counter()
        done = lb.run(*options, timeout=3600)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{mode}: run failed:\n{done.stdout}\n{done.stderr}")
        run_dir = lb.run_dirs()[-1]
        result = {"mode": mode, "wall_seconds": round(wall, 2),
                  **summarize(round_breakdown(_lines(run_dir / rundir.METRICS)))}
        if mode == "resident":
            result["sites"] = bytes_per_site(lb, len(data))
        return result
    finally:
        lb.close()


def simulated(cfg: RunConfig, root: Path) -> dict:
    from simulations.simulate import run_flower_simulation

    run_dir = rundir.create_run_dir(cfg.replace(output_dir=str(root)), "simulation")
    start = time.perf_counter()
    history = run_flower_simulation(cfg, run_dir, echo=lambda line: None).history
    return {"mode": "simulation", "wall_seconds": round(time.perf_counter() - start, 2),
            **summarize(round_breakdown(history))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run (default: 3)")
    parser.add_argument("--sites", type=int, default=3, help="sites (default: 3)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                        help=f"what to measure (default: {' '.join(MODES)})")
    parser.add_argument("--out", default=str(RESULTS / "deploy.json"),
                        help="result file (default: bench/results/deploy.json)")
    args = parser.parse_args(argv)
    cfg = RunConfig(sites=args.sites, rounds=args.rounds, baselines="")
    options = ["--sites", str(args.sites), "--rounds", str(args.rounds), "--baselines", ""]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        certs = root / "certs"
        init_consortium(certs, ["localhost"], ["127.0.0.1"],
                        [f"site-{i}" for i in range(args.sites)])
        data = export_sites(cfg, root / "data")
        for mode in args.modes:
            print(f"bench.deploy: {mode} ...", flush=True)
            results.append(simulated(cfg, root / "sim") if mode == "simulation"
                           else deployed(mode, root, certs, data, options))
    report = {"config": {"model": cfg.model, "width": cfg.width, "image_size": cfg.image_size,
                         "sites": args.sites, "rounds": args.rounds,
                         "local_epochs": cfg.local_epochs, "num_samples": cfg.num_samples},
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    parts = [f"{r['mode']}: transfer+scheduling {r['median_transfer_and_scheduling_later_rounds']}"
             f" s/round (first {r['first_round_transfer_and_scheduling']} s)" for r in results]
    sent = next((r["sites"]["0"]["train_reply_bytes"][0] for r in results if "sites" in r), None)
    print(f"bench.deploy: {'; '.join(parts)}; site train reply {sent} bytes -> {args.out}")


if __name__ == "__main__":
    main()
