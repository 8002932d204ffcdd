"""How many simulated sites fit on one machine: memory and seconds per round at 10, 50, 200 sites.

Each size runs the real command, `fedclinic simulate`, as a child process with client sampling
(`--fraction-train`, `--fraction-evaluate`), a small CNN on 28 px synthetic images and the same
amount of data per site (so a sampled site costs the same at every size), no baselines. While it
runs, the whole process tree under it (the driver, Ray's GCS server and raylet, every Ray worker)
is read from /proc every half second:

- `peak_rss_mib`: the largest sum of the tree's resident set sizes seen at one sample. Pages that
  several processes map (the torch libraries) count once per process, so this overstates what
  the machine really used; `peak_pss_mib` (proportional set size: shared pages split between
  their users) is the truer figure.
- `round_seconds`: each round's wall time from metrics.jsonl (the first round also starts the Ray
  actors); `steady_round_seconds` is the mean of the rounds after the first.

    .venv/bin/python -m bench.scale [--sites 10 50 200] [--rounds 3] [--fraction-train 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import rundir

RESULTS = Path(__file__).resolve().parent / "results"
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024
GOAL_MIB = 8 * 1024


def _children() -> dict[int, list[int]]:
    """Every live process's children, from /proc/PID/stat."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])     # the field after the state
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (Ray's raylet reparents nothing: its workers stay below)."""
    tree, found, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


def name_of(pid: int) -> str:
    """The process's name as ps shows it (Ray names its workers after their actor)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def memory_of(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in bytes; (0, 0) once it is gone."""
    try:
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        pss = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
                break
        return rss, pss
    except (OSError, ValueError, IndexError):
        return 0, 0


@dataclass
class TreeSampler:
    """Samples the memory of a process tree in a thread until stopped; keeps the peaks."""

    root: int
    interval: float = 0.5
    peak_rss: int = 0
    peak_pss: int = 0
    peak_driver_rss: int = 0
    peak_processes: int = 0
    samples: int = 0
    at_peak: dict[str, int] = field(default_factory=dict)   # process name -> RSS, at the peak
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        pids = process_tree(self.root)
        sizes = [memory_of(pid) for pid in pids]
        if sum(r for r, _ in sizes) > self.peak_rss:
            self.peak_rss = sum(r for r, _ in sizes)
            self.at_peak = {}
            for pid, (rss, _) in zip(pids, sizes):
                name = "driver" if pid == self.root else name_of(pid)
                self.at_peak[name] = self.at_peak.get(name, 0) + rss
        self.peak_pss = max(self.peak_pss, sum(p for _, p in sizes))
        self.peak_driver_rss = max(self.peak_driver_rss, sizes[0][0])
        self.peak_processes = max(self.peak_processes, sum(r > 0 for r, _ in sizes))
        self.samples += 1

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeSampler:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def simulate_command(args: argparse.Namespace, sites: int, output_dir: str) -> list[str]:
    return [sys.executable, "-m", "fedclinic.cli", "simulate", "--sites", str(sites),
            "--num-samples", str(args.samples_per_site * sites), "--rounds", str(args.rounds),
            "--fraction-train", str(args.fraction_train),
            "--fraction-evaluate", str(args.fraction_evaluate),
            "--model", args.model, "--width", str(args.width), "--image-size", "28",
            "--local-epochs", "1", "--baselines", "", "--seed", "0",
            "--output-dir", output_dir, "--run-name", "scale"]


def round_seconds(metrics: Path) -> tuple[list[float], list[int], list[int]]:
    """Each round's seconds (from the cumulative marks in metrics.jsonl, the round-0 line being
    the initial model's evaluation), and the sites trained and evaluated in it."""
    lines = [json.loads(t) for t in metrics.read_text().splitlines() if t.strip()]
    marks = [float(line["seconds"]) for line in lines if line["round"] == 0][:1] or [0.0]
    rounds = [line for line in lines if line["round"] >= 1]
    marks += [float(line["seconds"]) for line in rounds]
    trained = [sum(1 for s in line["sites"].values() if s.get("train")) for line in rounds]
    tested = [sum(1 for s in line["sites"].values() if s.get("test")) for line in rounds]
    return [round(b - a, 2) for a, b in zip(marks, marks[1:])], trained, tested


def measure(args: argparse.Namespace, sites: int) -> dict:
    """One `fedclinic simulate` child at ``sites`` sites: peak memory of its tree, round times."""
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        command = simulate_command(args, sites, tmp)
        start = time.perf_counter()
        log = Path(tmp) / "simulate.log"
        with log.open("w") as out:
            child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
            with TreeSampler(child.pid) as sampler:
                code = child.wait()
        wall = time.perf_counter() - start
        if code != 0:
            raise SystemExit(f"{sites} sites: fedclinic simulate exited {code}:\n"
                             f"{log.read_text()[-3000:]}")
        rounds, trained, tested = round_seconds(Path(tmp) / "scale" / rundir.METRICS)
    steady = rounds[1:] or rounds
    return {"sites": sites, "sampled_per_round": trained, "evaluated_per_round": tested,
            "rounds": args.rounds, "samples_per_site": args.samples_per_site,
            "peak_rss_mib": round(sampler.peak_rss / MIB),
            "peak_pss_mib": round(sampler.peak_pss / MIB),
            "peak_driver_rss_mib": round(sampler.peak_driver_rss / MIB),
            "peak_processes": sampler.peak_processes, "memory_samples": sampler.samples,
            "rss_mib_at_peak": {k: round(v / MIB) for k, v in sorted(sampler.at_peak.items())},
            "round_seconds": rounds,
            "steady_round_seconds": round(sum(steady) / len(steady), 2),
            "wall_seconds": round(wall, 2), "under_8_gib": sampler.peak_rss < GOAL_MIB * MIB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 50, 200],
                        help="federation sizes to measure (default: 10 50 200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run (default: 3)")
    parser.add_argument("--fraction-train", type=float, default=0.1,
                        help="share of the sites trained each round (default: 0.1)")
    parser.add_argument("--fraction-evaluate", type=float, default=0.1,
                        help="share of the sites evaluated each round (default: 0.1)")
    parser.add_argument("--samples-per-site", type=int, default=40,
                        help="synthetic images per site (default: 40)")
    parser.add_argument("--model", default="cnn", help="model (default: cnn)")
    parser.add_argument("--width", type=int, default=8, help="model width (default: 8)")
    parser.add_argument("--out", default=str(RESULTS / "scale.json"),
                        help="result file (default: bench/results/scale.json)")
    args = parser.parse_args()
    rows = []
    for sites in args.sites:
        rows.append(measure(args, sites))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": platform.platform(), "cpus": os.cpu_count(), "model": args.model,
        "width": args.width, "image_size": 28, "fraction_train": args.fraction_train,
        "fraction_evaluate": args.fraction_evaluate,
        "command": " ".join(["python -m bench.scale", *sys.argv[1:]]),
        "runs": rows}, indent=2) + "\n")
    summary = ", ".join(f"{r['sites']} sites ({max(r['sampled_per_round'])} sampled): "
                        f"{r['peak_rss_mib']} MiB RSS / {r['peak_pss_mib']} MiB PSS, "
                        f"{r['steady_round_seconds']:.1f} s/round" for r in rows)
    print(f"scale: {summary} -> {out}")


if __name__ == "__main__":
    main()
