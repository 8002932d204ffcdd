"""The fedclinic release (equal to `version` in pyproject.toml; a site checks that an app bundle
asks for exactly this one)."""

__version__ = "0.1.0"
