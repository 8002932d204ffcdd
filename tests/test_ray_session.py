"""A tradeoff sweep runs all its cells on one Ray instance (`simulations.ray_session`)."""

import importlib

import pytest
import torch

from common.config import RunConfig
from simulations import ray_session
from simulations.tradeoff.spec import SweepSpec, parse_epsilons, parse_seeds
from simulations.tradeoff.sweep import run_tradeoff

TINY = dict(model="cnn", width=8, num_samples=200, sites=2, rounds=1, local_epochs=1,
            batch_size=16, baselines="")


class _Pool:
    def __init__(self) -> None:
        self.terminated = 0

    def terminate_all_actors(self) -> None:
        self.terminated += 1


def test_inside_the_block_flowers_backend_stops_its_actors_but_not_ray(monkeypatch):
    """The swap is undone at the end; ending an engine inside the block never calls
    ray.shutdown, and the block's end stops Ray once."""
    import ray

    module = importlib.import_module(ray_session.FLOWER_BACKEND)
    original = module.RayBackend
    shutdowns = []
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(1))
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    assert not ray_session.kept()
    with ray_session.kept_ray():
        assert ray_session.kept() and module.RayBackend is not original
        with ray_session.kept_ray():           # nested: still one session
            pass
        assert ray_session.kept()
        backend = object.__new__(module.RayBackend)   # no Ray start: only terminate is tried
        backend.pool = _Pool()
        backend.terminate()
        assert backend.pool.terminated == 1 and shutdowns == []
    assert module.RayBackend is original and not ray_session.kept()
    assert shutdowns == [1]


def test_a_changed_flower_backend_fails_loudly(monkeypatch):
    module = importlib.import_module(ray_session.FLOWER_BACKEND)
    monkeypatch.delattr(module, "RayBackend")
    with pytest.raises(RuntimeError, match="Flower changed"):
        with ray_session.kept_ray():
            pass


def test_a_two_cell_sweep_starts_ray_once(tmp_path, monkeypatch):
    """Two real cells (two federations, two engines): ray.init runs once, Ray stays up between
    the cells and is stopped at the end of the sweep."""
    import ray

    torch.set_num_threads(1)
    inits, shutdowns, up_at_second_cell = [], [], []
    real_init, real_shutdown = ray.init, ray.shutdown

    def counting_init(*args, **kwargs):
        inits.append(kwargs)
        return real_init(*args, **kwargs)

    def counting_shutdown(*args, **kwargs):
        shutdowns.append(1)
        return real_shutdown(*args, **kwargs)

    monkeypatch.setattr(ray, "init", counting_init)
    monkeypatch.setattr(ray, "shutdown", counting_shutdown)
    base = RunConfig(**{**TINY, "output_dir": str(tmp_path)})
    spec = SweepSpec(base, parse_epsilons("inf"), parse_seeds("2", base.seed), "reuse")

    def echo(line: str) -> None:
        if "cell 2/2" in line and "start" in line:
            up_at_second_cell.append(ray.is_initialized())

    outcome = run_tradeoff(spec, echo=echo)
    assert outcome.ran == 2
    assert len(inits) == 1, f"ray.init ran {len(inits)} times for 2 cells"
    assert up_at_second_cell == [True]
    assert shutdowns == [1] and not ray.is_initialized()
