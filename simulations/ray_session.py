"""One Ray instance for several simulations in a row (the cells of a tradeoff sweep).

Each `simulate()` starts Ray (`simulations.engine.start_ray`) and stops it at its end, and so does
Flower's Ray backend when its engine ends (`RayBackend.terminate` calls ``ray.shutdown``).
Inside `kept_ray()` the first simulation starts Ray as usual and the later ones find it running:
`start_ray` and the simulator's own stop ask `kept()`, and Flower's backend is swapped for one
whose ``terminate`` stops its actors but leaves Ray running. Ray stops when the block ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_open: list[int] = []      # one entry per open `kept_ray` block (they may nest)

FLOWER_BACKEND = "flwr.server.superlink.fleet.vce.backend.raybackend"


def kept() -> bool:
    """True inside `kept_ray()`: a simulation must neither restart nor stop Ray."""
    return bool(_open)


def _flower_backend_module():
    """Flower's Ray backend module, checked for what the swap relies on: a ``RayBackend`` class
    (looked up by the engine when it starts) with ``terminate`` and its actor ``pool``."""
    import importlib

    try:
        module = importlib.import_module(FLOWER_BACKEND)
    except ImportError as exc:
        raise RuntimeError(f"Flower changed: {FLOWER_BACKEND} is gone ({exc}); the sweep cannot "
                           f"keep one Ray across its cells") from exc
    backend = getattr(module, "RayBackend", None)
    if not isinstance(backend, type) or not callable(getattr(backend, "terminate", None)):
        raise RuntimeError(f"Flower changed: {FLOWER_BACKEND}.RayBackend.terminate is gone; the "
                           f"sweep cannot keep one Ray across its cells")
    return module


def _keeping(backend: type) -> type:
    """Flower's RayBackend, except that ending an engine stops its actors, not Ray."""

    class KeptRayBackend(backend):  # type: ignore[misc, valid-type]
        def terminate(self) -> None:
            pool = getattr(self, "pool", None)
            if pool is not None:
                pool.terminate_all_actors()

    return KeptRayBackend


@contextmanager
def kept_ray() -> Iterator[None]:
    """Run the simulations inside this block on one Ray instance, stopped when it ends."""
    module = _flower_backend_module()
    original = module.RayBackend
    outermost = not _open
    if outermost:
        module.RayBackend = _keeping(original)
    _open.append(1)
    try:
        yield
    finally:
        _open.pop()
        if outermost:
            module.RayBackend = original
            import ray

            if ray.is_initialized():
                ray.shutdown()
