"""Cost of sample-level DP-SGD: DP step time / non-DP step time, per Opacus grad-sample mode.

One step = forward, backward and optimiser step on a fixed batch (default 64) of random images,
on the CPU with a fixed number of torch threads. The DP step is the one `train_local_dp` takes
(`common.training.dp_wrapping.dp_wrapped`: per-sample gradients, clipping, noise, SGD). Cases:
ResNet-18 (GroupNorm) at 28x28 and 64x64 with CE, the 2D U-Net at 64x64 with a per-pixel CE.

The machine may be shared, so the configurations of a case are timed round-robin (one step of
each per repetition) after warm-up, and both wall time and process CPU time are recorded; the
ratios use medians. Each mode's per-sample gradients are also compared with the hook mode's on
two samples (`common.training.dp_model.mode_deviation`). A mode that fails is recorded with its
error.
Like `train_local_dp`, the process first calls `retain_freed_memory` (glibc malloc tuning), which
applies to the DP and the non-DP steps alike.

    .venv/bin/python -m bench.dp_overhead [--steps 3] [--warmup 1] [--threads 2] [--batch 64]
        [--cases resnet18_28 ...] [--out bench/results/dp_overhead.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from common.training.dp_model import AUTO_MODE, mode_deviation
from common.training.dp_wrapping import dp_wrapped
from common.training.memory import retain_freed_memory
from common.models import build_model

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("hooks", "ew", "functorch")
GOAL = 2.5   # issue: the default mode's DP step at most 2.5x the non-DP step


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    size: int
    width: int
    classes: int


CASES = (
    Case("resnet18_28", "resnet18", 28, 16, 2),
    Case("resnet18_64", "resnet18", 64, 16, 2),
    Case("unet_64", "unet", 64, 16, 2),
)


def _data(case: Case, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand((batch, 1, case.size, case.size), generator=g)
    shape = (batch, case.size, case.size) if case.model == "unet" else (batch,)
    return images, torch.randint(0, case.classes, shape, generator=g)


def _loss(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, labels)   # per-pixel CE for (N, C, H, W) outputs: mean of means


class Runner:
    """One configuration of a case: a model copy, its optimiser and a step function."""

    def __init__(self, model: nn.Module, mode: str | None, data: tuple[torch.Tensor, torch.Tensor],
                 batch: int) -> None:
        self.mode = mode
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.data = data
        self.batch = batch
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._ctx = None
        self.net, self.opt = model, self.optimizer
        if mode is not None:
            self._ctx = dp_wrapped(model, self.optimizer, mode=mode, noise_multiplier=1.0,
                                   max_grad_norm=1.0, expected_batch_size=batch,
                                   noise_generator=torch.Generator().manual_seed(1))
            self.net, self.opt = self._ctx.__enter__()

    def step(self, record: bool) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        images, labels = self.data
        _loss(self.net(images), labels).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if record:
            self.wall.append(time.perf_counter() - wall)
            self.cpu.append(time.process_time() - cpu)

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)


def _try(fn: Callable[[], object]) -> tuple[object, str | None]:
    try:
        return fn(), None
    except Exception as exc:  # a mode that cannot run is a result, recorded with its error
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"


def run_case(case: Case, *, batch: int, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    base = build_model(case.model, spatial_dims=2, in_channels=1, num_classes=case.classes,
                       width=case.width)
    data = _data(case, batch)
    out: dict = {"case": case.name, "model": case.model, "image_size": case.size,
                 "width": case.width, "batch": batch, "modes": {}}
    runners = [Runner(copy.deepcopy(base), None, data, batch)]
    for mode in MODES:
        deviation, error = _try(lambda: mode_deviation(copy.deepcopy(base), mode, data[0][:2]))
        runner = None
        if error is None:
            runner, error = _try(lambda: Runner(copy.deepcopy(base), mode, data, batch))
        if runner is not None:
            _, error = _try(lambda: runner.step(record=False))   # first warm-up step
            if error is not None:
                runner.close()
            else:
                runners.append(runner)
        out["modes"][mode] = {"error": error, "grad_deviation_vs_hooks": deviation}
    for _ in range(warmup - 1):
        for runner in runners:
            runner.step(record=False)
    runners[0].step(record=False)
    for _ in range(steps):               # round-robin: load changes hit every configuration
        for runner in runners:
            runner.step(record=True)
    plain_wall, plain_cpu = statistics.median(runners[0].wall), statistics.median(runners[0].cpu)
    out["non_dp_step_seconds"] = {"wall": round(plain_wall, 4), "cpu": round(plain_cpu, 4)}
    for runner in runners[1:]:
        wall, cpu = statistics.median(runner.wall), statistics.median(runner.cpu)
        out["modes"][runner.mode].update(
            step_seconds={"wall": round(wall, 4), "cpu": round(cpu, 4)},
            ratio_wall=round(wall / plain_wall, 3), ratio_cpu=round(cpu / plain_cpu, 3))
        runner.close()
    return out


def _summary(rows: list[dict]) -> str:
    parts = []
    for row in rows:
        modes = []
        for mode, res in row["modes"].items():
            if res.get("ratio_cpu") is None:
                modes.append(f"{mode} fails")
            else:
                modes.append(f"{mode} {res['ratio_cpu']:.2f}x")
        parts.append(f"{row['case']}: " + ", ".join(modes))
    default = [row["modes"][AUTO_MODE].get("ratio_cpu") for row in rows]
    worst = max((r for r in default if r is not None), default=float("nan"))
    verdict = "meets" if worst <= GOAL else "misses"
    return (f"DP/non-DP step time (CPU-time medians) - {'; '.join(parts)}; default mode "
            f"{AUTO_MODE} worst {worst:.2f}x ({verdict} the {GOAL}x goal)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (>= 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch", type=int, default=64, help="batch size")
    parser.add_argument("--out", type=Path, default=RESULTS / "dp_overhead.json",
                        help="result file (default: bench/results/dp_overhead.json)")
    parser.add_argument("--cases", nargs="+", default=[c.name for c in CASES],
                        choices=[c.name for c in CASES], help="cases to run (default: all)")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 1 or args.batch < 2 or args.threads < 1:
        parser.error("--steps and --warmup must be >= 1, --batch >= 2, --threads >= 1")
    torch.set_num_threads(args.threads)
    tuned = retain_freed_memory()   # as train_local_dp does; applies to the non-DP steps too
    start, rows, load_before = time.perf_counter(), [], os.getloadavg()
    for case in (c for c in CASES if c.name in args.cases):
        rows.append(run_case(case, batch=args.batch, steps=args.steps, warmup=args.warmup))
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
        "torch": torch.__version__, "steps": args.steps, "warmup": args.warmup,
        "default_mode": AUTO_MODE, "malloc_retains_freed_memory": tuned, "goal_ratio": GOAL,
        "seconds": round(time.perf_counter() - start, 1),
        # other processes on the machine inflate every step; compare ratios, not seconds
        "load_average_1_5_15": {"before": [round(v, 2) for v in load_before],
                                "after": [round(v, 2) for v in os.getloadavg()]},
        "cases": rows}, indent=2) + "\n")
    print(f"{_summary(rows)} -> {out}")


if __name__ == "__main__":
    main()
