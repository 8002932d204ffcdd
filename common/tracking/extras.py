"""The optional packages behind each tracker, and the one line that says how to install them."""

from __future__ import annotations

import importlib

# kind -> (modules it imports, the pip extra that brings them)
NEEDS = {
    "mlflow": (("mlflow", "sqlalchemy", "alembic"), "mlflow"),
    "tensorboard": (("tensorboard", "torch.utils.tensorboard"), "tensorboard"),
}


def missing_extra(kind: str) -> str:
    """'' when ``kind``'s packages import, else the message naming the pip command."""
    modules, extra = NEEDS[kind]
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return (f"--track {kind} needs the {extra} extra ({module} is not installed: "
                    f"{exc}); install it with: pip install 'fedclinic[{extra}]'")
    return ""


def check_extras(kinds: list[str]) -> None:
    """ConfigError (exit 2) naming the pip command for the first tracker that cannot run."""
    from common.config import ConfigError

    for kind in kinds:
        message = missing_extra(kind)
        if message:
            raise ConfigError(message)
