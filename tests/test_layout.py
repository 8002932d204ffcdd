"""The house's import rules (ARCHITECTURE.md), read from the source with the AST.

Every import counts, those inside functions too. A failure names the file, the line and the rule.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the top-level packages it may never import (ARCHITECTURE.md, "What may import what")
FORBIDDEN: dict[str, frozenset[str]] = {
    "common": frozenset({"runtime", "client", "server", "simulations", "deploy", "fedclinic",
                         "bench", "flwr"}),
    "runtime": frozenset({"client", "server", "simulations", "deploy", "fedclinic", "bench"}),
    "client": frozenset({"server", "simulations", "deploy", "fedclinic", "bench"}),
    "server": frozenset({"client", "simulations", "deploy", "fedclinic", "bench"}),
    "deploy": frozenset({"client", "server", "simulations", "fedclinic", "bench"}),
    "simulations": frozenset({"deploy", "fedclinic", "bench"}),
}
# Only the console layer (and the benchmarks' own scripts) parse command lines.
ARGPARSE_ALLOWED = frozenset({"fedclinic", "bench"})
PACKAGES = (*FORBIDDEN, "fedclinic", "bench")


def python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, nested ones included; relative
    imports are resolved against the file's own package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = path.relative_to(ROOT).parent.parts
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
            elif node.module:
                found.append((node.lineno, node.module))
    return found


def violations(package: str) -> list[str]:
    banned = FORBIDDEN[package]
    return [f"{path.relative_to(ROOT)}:{line} imports {module} ({package} may not import "
            f"{module.split('.')[0]})"
            for path in python_files(package)
            for line, module in imported_modules(path)
            if module.split(".")[0] in banned]


def test_every_package_is_covered_by_a_rule():
    on_disk = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert on_disk <= set(PACKAGES), f"packages without an import rule: {on_disk - set(PACKAGES)}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_point_down(package: str):
    assert violations(package) == []


@pytest.mark.parametrize("package", sorted(set(PACKAGES) - ARGPARSE_ALLOWED))
def test_only_the_console_layer_parses_flags(package: str):
    offenders = [f"{path.relative_to(ROOT)}:{line}" for path in python_files(package)
                 for line, module in imported_modules(path) if module == "argparse"]
    assert offenders == [], "argparse belongs in fedclinic/cli/"


def test_the_rule_checker_sees_nested_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: an import inside a function and a relative import are both seen."""
    pkg = tmp_path / "client"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text("def f():\n    from server.app import app\n    from . import y\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert imported_modules(pkg / "x.py") == [(2, "server.app"), (3, "client")]
    assert violations("client") == [
        "client/x.py:2 imports server.app (client may not import server)"]


def test_common_runs_without_flower():
    """Beyond the AST: importing every common module, and partitioning with Flower Datasets'
    partitioners (imported lazily), loads no `flwr` module."""
    script = """
import importlib, pkgutil, sys
import numpy as np
import common
for info in pkgutil.walk_packages(common.__path__, "common."):
    importlib.import_module(info.name)
from common.partition_spec import parse_partition
from common.partitions.label_skew import partition_indices
parts = partition_indices(np.arange(60) % 3, 3, parse_partition("dirichlet:0.5"), 0)
assert sum(len(p) for p in parts) == 60, parts
loaded = sorted(m for m in sys.modules if m == "flwr" or m.startswith("flwr."))
print("flwr modules:", loaded)
sys.exit(1 if loaded else 0)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
