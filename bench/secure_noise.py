"""Step-time cost of secure randomness in DP-SGD: seeded (simulation) vs two secure candidates.

One step = one Poisson draw over ``--records`` records at q = batch / records (the sampling a
site does per logical step), then forward, backward and the DP optimiser step (clip, noise, SGD)
on a fixed batch (default 64) of random 28x28 images, ResNet-18 with GroupNorm (width 16, the
project's model, Opacus hook mode as `train_local_dp` uses it). The fixed batch keeps the
compute equal across candidates, so the differences are the randomness. Candidates:

- ``seeded``: today's simulation path: torch generators seeded once (Opacus plain noise).
- ``seeded_hardened``: the same generator with Opacus ``secure_mode=True`` (sum of four normals):
  the cost of the floating-point defence alone.
- ``a_reseeded``: before every step, fresh `common.training.secure_random.secure_generator`s
  (whole MT19937 state from the OS CSPRNG) for sampling and noise, Opacus ``secure_mode=True``.
- ``b_chacha20``: `CsprngSource` (ChaCha20 keyed from the OS) for sampling and hardened float64
  noise, through `CsprngDPOptimizer` (what ``train_local_dp(secure=True)`` runs).

The configurations are timed round-robin (one step of each per repetition, the order rotated
each repetition) after warm-up, so load changes on a shared machine hit all of them alike; wall
and process CPU medians are recorded. The default is one torch thread and the ratios use CPU
time: on a shared machine a multi-threaded step spins in OpenMP barriers whenever one of its
threads is descheduled, so neither its wall nor its CPU time measures the work, while a
single-threaded step's process CPU time does (up to cache effects).
The randomness alone (one step's sampling + noise for every parameter, no model) is also timed,
and the noise of a float32 variant of b (Opacus' arithmetic on ChaCha20 bits), for the record.

    .venv/bin/python -m bench.secure_noise [--steps 12] [--warmup 3] [--threads 1] [--batch 64]
        [--records 4708] [--out bench/results/secure_noise.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import numpy as np
import opacus
import torch
import torch.nn.functional as F
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _generate_noise
from torch import nn

from common.models import build_model
from common.training.dp_model import AUTO_MODE
from common.training.dp_wrapping import dp_wrapped, grad_sample_wrapped
from common.training.memory import retain_freed_memory
from common.training.secure_random import CsprngSource, secure_generator

RESULTS = Path(__file__).resolve().parent / "results"
CANDIDATES = ("seeded", "seeded_hardened", "a_reseeded", "b_chacha20")
SIGMA, CLIP = 1.0, 1.0


class Candidate:
    """One configuration: a model copy wrapped for DP-SGD and its per-step randomness."""

    def __init__(self, name: str, model: nn.Module, batch: int, records: int,
                 stack: ExitStack) -> None:
        self.name, self.records, self.rate = name, records, batch / records
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.source = CsprngSource() if name == "b_chacha20" else None
        self.sampling = torch.Generator().manual_seed(0)
        sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        kwargs = dict(noise_multiplier=SIGMA, max_grad_norm=CLIP, expected_batch_size=batch)
        if name in ("seeded", "b_chacha20"):
            noise = ({"noise_source": self.source} if self.source is not None
                     else {"noise_generator": torch.Generator().manual_seed(1)})
            self.net, self.opt = stack.enter_context(
                dp_wrapped(model, sgd, mode=AUTO_MODE, **kwargs, **noise))
        else:   # Opacus' own secure_mode path with a torch generator
            self.net = stack.enter_context(grad_sample_wrapped(model, AUTO_MODE))
            self.opt = DPOptimizer(sgd, loss_reduction="mean", secure_mode=True,
                                   generator=torch.Generator().manual_seed(1), **kwargs)

    def draw(self) -> int:
        """This step's randomness set-up and Poisson draw; returns the batch size drawn."""
        if self.source is not None:
            return len(self.source.poisson_indices(self.records, self.rate))
        if self.name == "a_reseeded":
            self.sampling, self.opt.generator = secure_generator(), secure_generator()
        return int((torch.rand(self.records, generator=self.sampling) < self.rate).sum())

    def noise_only(self) -> None:
        """One step's noise for every parameter, without the model."""
        for p in self.opt.params:
            if self.source is not None:
                self.source.add_noise(p.detach(), SIGMA * CLIP)
            else:
                _generate_noise(SIGMA * CLIP, p.detach(), self.opt.generator,
                                secure_mode=self.opt.secure_mode)

    def step(self, data: tuple[torch.Tensor, torch.Tensor], record: bool) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.draw()
        images, labels = data
        F.cross_entropy(self.net(images), labels).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if record:
            self.wall.append(time.perf_counter() - wall)
            self.cpu.append(time.process_time() - cpu)


def _float32_noise(source: CsprngSource, reference: torch.Tensor, std: float) -> torch.Tensor:
    """The float32 alternative to `CsprngSource.add_noise` (Opacus' arithmetic: 24-bit
    uniforms, float32 Box-Muller, four normals summed / 2): timed for the record, not used."""
    count = reference.numel()
    bits = np.frombuffer(source.random_bytes(4 * 4 * count), dtype="<u4")
    low = np.bitwise_and(bits, np.uint32((1 << 24) - 1)).view(np.int32)
    u = torch.from_numpy(low).float().mul_(2.0 ** -24).view(2, 2 * count)
    radius = u[0].neg_().log1p_().mul_(-2.0).sqrt_()
    angle = u[1].mul_(2.0 * math.pi)
    terms = torch.cat((radius * angle.cos(), radius.mul_(angle.sin_()))).view(4, count)
    return reference + terms.sum(0).mul_(std / 2).view(reference.shape)


def _median_ms(fn: Callable[[], object], reps: int) -> dict[str, float]:
    """Median wall and process CPU milliseconds of ``reps`` calls of ``fn``."""
    wall, cpu = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"wall": round(1000 * statistics.median(wall), 2),
            "cpu": round(1000 * statistics.median(cpu), 2)}


def _seed_truncation() -> bool:
    """Whether torch's CPU generator ignores the high 32 bits of a 64-bit seed."""
    s = 0x1234_5678
    a = torch.rand(8, generator=torch.Generator().manual_seed(s))
    return bool(torch.equal(a, torch.rand(8, generator=torch.Generator().manual_seed(s + 2**32))))


def run(batch: int, records: int, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    base = build_model("resnet18", spatial_dims=2, in_channels=1, num_classes=2, width=16)
    g = torch.Generator().manual_seed(0)
    data = (torch.rand((batch, 1, 28, 28), generator=g), torch.randint(0, 2, (batch,), generator=g))
    with ExitStack() as stack:
        cands = [Candidate(n, copy.deepcopy(base), batch, records, stack) for n in CANDIDATES]
        for _ in range(warmup):
            for c in cands:
                c.step(data, record=False)
        for rep in range(steps):   # round-robin, rotated so no candidate always goes first
            for c in cands[rep % len(cands):] + cands[:rep % len(cands)]:
                c.step(data, record=True)
        randomness = {c.name: {"noise_ms": _median_ms(c.noise_only, steps),
                               "sampling_ms": _median_ms(c.draw, steps)} for c in cands}
        source, params = CsprngSource(), cands[0].opt.params
        float32_ms = _median_ms(lambda: [_float32_noise(source, p.detach(), SIGMA * CLIP)
                                         for p in params], steps)
    base_wall = statistics.median(cands[0].wall)
    base_cpu = statistics.median(cands[0].cpu)
    rows = {}
    for c in cands:
        wall, cpu = statistics.median(c.wall), statistics.median(c.cpu)
        rows[c.name] = {"step_ms": {"wall": round(1000 * wall, 1), "cpu": round(1000 * cpu, 1)},
                        "relative_to_seeded": {"wall": round(wall / base_wall, 4),
                                               "cpu": round(cpu / base_cpu, 4)},
                        "randomness_only": randomness[c.name],
                        "cpu_ms_each_step": [round(1000 * t, 1) for t in c.cpu],
                        "wall_ms_each_step": [round(1000 * t, 1) for t in c.wall]}
    return {"parameters": sum(p.numel() for p in base.parameters()), "candidates": rows,
            "b_float32_variant_noise_ms": float32_ms}


def _summary(res: dict) -> str:
    parts = [f"{name} {row['step_ms']['cpu']:.0f} ms ({row['relative_to_seeded']['cpu']:.3f}x)"
             for name, row in res["candidates"].items()]
    return ("secure randomness, ResNet-18 GN 28 px batch 64, median CPU-time step: "
            + ", ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12,
                        help="timed steps per candidate (a multiple of 4 rotates evenly)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--batch", type=int, default=64, help="physical batch size")
    parser.add_argument("--records", type=int, default=4708,
                        help="records Poisson-sampled per step (PneumoniaMNIST train: 4708)")
    parser.add_argument("--out", type=Path, default=RESULTS / "secure_noise.json",
                        help="result file (default: bench/results/secure_noise.json)")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.batch < 2 or args.threads < 1 \
            or args.records < args.batch:
        parser.error("--steps >= 1, --warmup >= 0, --batch >= 2, --threads >= 1, "
                     "--records >= --batch")
    torch.set_num_threads(args.threads)
    tuned = retain_freed_memory()
    start, load_before = time.perf_counter(), os.getloadavg()
    res = run(args.batch, args.records, args.steps, args.warmup)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
        "torch": torch.__version__, "opacus": opacus.__version__, "model": "resnet18 GN width 16",
        "image_size": 28, "batch": args.batch, "records_sampled_per_step": args.records,
        "steps": args.steps, "warmup": args.warmup, "grad_sample_mode": AUTO_MODE,
        "malloc_retains_freed_memory": tuned, "seconds": round(time.perf_counter() - start, 1),
        "note": "shared 2-core machine (other helpers' processes running): compare the "
                "round-robin CPU-time medians and ratios, not absolute seconds",
        "torch_cpu_manual_seed_keeps_only_32_bits": _seed_truncation(),
        "load_average_1_5_15": {"before": [round(v, 2) for v in load_before],
                                "after": [round(v, 2) for v in os.getloadavg()]},
        **res}, indent=2) + "\n")
    print(f"{_summary(res)} -> {args.out}")


if __name__ == "__main__":
    main()
