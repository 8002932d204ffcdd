"""fedclinic: federated learning for hospitals (console command and version)."""

from common.version import __version__

__all__ = ["__version__"]
