"""Time from `fedclinic site` start to its first task, and the round wait after a site SIGKILL.

A consortium of real processes on loopback (deploy/loopback.py: `fedclinic server`, TLS, site
keys, free ports): two sites join, a run that needs all three sites waits for them; then the
third `fedclinic site` starts, and the time until its SuperNode has received the first train
message is measured (its own steps from its output: data validated, SuperNode up, joined). Then,
with the run going, the third site is SIGKILLed (its process alone) in the middle of a round: the
time until that round completes without it, and whether any of its processes is left.
Writes bench/results/site_start.json and prints one line.

    .venv/bin/python -m bench.site_start [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import tempfile
import time
from pathlib import Path

from common.config import RunConfig
from deploy.certs import init_consortium
from deploy.loopback import Loopback, wait_until
from simulations.export import export_sites

RUN = ("--sites", "3", "--model", "cnn", "--width", "4", "--num-samples", "240",
       "--local-epochs", "1", "--batch-size", "32", "--min-sites", "2",
       "--round-timeout", "120")
POLICY = 'require_dp = false\nmax_epsilon_per_run = 8.0\nlifetime_epsilon = 1000.0\n'


def _steps(text: str) -> dict[str, float]:
    """Seconds after start the site reported for joining (its own clock)."""
    found = re.search(r"joined \S+ as node \d+ \(([\d.]+) s after start\)", text)
    return {"joined_s": float(found[1])} if found else {}


def measure(root: Path) -> dict:
    init_consortium(root / "certs", ["localhost"], ["127.0.0.1"], ["site-0", "site-1", "site-2"])
    data = export_sites(RunConfig(sites=3, num_samples=240), root / "data")
    lb = Loopback(root / "run", root / "certs", data, policy=root / "policy.toml",
                  auto_runtime_port=True)
    lb.policy.write_text(POLICY)
    lb.root.mkdir()
    try:
        lb.start_server()
        for i in (0, 1):
            lb.start_site(i)
            lb.wait_site_connected(i)
        lb.submit(*RUN, "--rounds", "12")
        run_dir = wait_until(lambda: next(iter(lb.run_dirs()), None), 300, "the run directory")
        wait_until(lambda: "waiting for sites" in lb.output("run"), 300, "the run to wait")
        started = time.monotonic()
        lb.start_site(2)
        wait_until(lambda: lb.train_messages_received(2) >= 1, 300, "site 2's first task")
        first_task = time.monotonic() - started
        steps = _steps(lb.latest_output("site-2"))
        wait_until(lambda: 1 in lb.rounds_done(run_dir), 600, "round 1")
        received = lb.train_messages_received(2)
        wait_until(lambda: lb.train_messages_received(2) > received, 300, "the next round")
        under_way = max(lb.rounds_done(run_dir)) + 1
        children = lb.child_pids("site-2")
        killed = time.monotonic()
        lb.signal_only("site-2", signal.SIGKILL)
        wait_until(lambda: under_way in lb.rounds_done(run_dir), 600, f"round {under_way}")
        round_wait = time.monotonic() - killed
        left = [pid for pid in children if Path(f"/proc/{pid}").exists()]
        return {"start_to_first_task_s": round(first_task, 2), **steps,
                "round_wait_after_sigkill_s": round(round_wait, 2),
                "processes_left_after_sigkill": len(left)}
    finally:
        lb.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    results = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(measure(Path(tmp)))
    out = Path(__file__).parent / "results" / "site_start.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print("site start -> first task: " + ", ".join(f"{r['start_to_first_task_s']} s"
                                                   for r in results)
          + "; round wait after a site SIGKILL: "
          + ", ".join(f"{r['round_wait_after_sigkill_s']} s" for r in results)
          + f"; processes left: {sum(r['processes_left_after_sigkill'] for r in results)}")


if __name__ == "__main__":
    main()
