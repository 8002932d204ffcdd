"""fedclinic: federated learning for hospitals (console command and version)."""

__version__ = "0.1.0"
