"""Layout metrics: lines per package, the largest files and the longest functions.

    python -m bench.layout [--out bench/results/layout.json]

Writes JSON and prints a one-line summary. Used to report a refactor's before/after; it measures
the source tree (not tests) as text and with the AST, and runs nothing.
"""

from __future__ import annotations

import argparse
import ast
import json
from dataclasses import asdict, dataclass
from pathlib import Path

PACKAGES = ("common", "runtime", "client", "server", "simulations", "deploy", "fedclinic", "bench")


@dataclass(frozen=True)
class FunctionSize:
    name: str    # file:qualified.name
    lines: int


def source_files(root: Path, package: str) -> list[Path]:
    """The package's Python files, sorted (an absent package has none)."""
    return sorted((root / package).rglob("*.py")) if (root / package).is_dir() else []


def line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def function_sizes(path: Path, root: Path) -> list[FunctionSize]:
    """Every function and method in the file with its length in lines (decorators excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    sizes: list[FunctionSize] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{path.relative_to(root)}:{prefix}{child.name}"
                sizes.append(FunctionSize(name, child.end_lineno - child.lineno + 1))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
    visit(tree, "")
    return sizes


def measure(root: Path) -> dict:
    per_package = {p: sum(line_count(f) for f in source_files(root, p)) for p in PACKAGES}
    files = [(str(f.relative_to(root)), line_count(f)) for p in PACKAGES for f in source_files(root, p)]
    functions = [s for p in PACKAGES for f in source_files(root, p) for s in function_sizes(f, root)]
    lengths = sorted(s.lines for s in functions)
    return {
        "lines_per_package": {p: n for p, n in per_package.items() if n},
        "total_lines": sum(per_package.values()),
        "largest_files": sorted(files, key=lambda t: -t[1])[:10],
        "longest_functions": [asdict(s) for s in sorted(functions, key=lambda s: -s.lines)[:10]],
        "functions": len(functions),
        "median_function_lines": lengths[len(lengths) // 2] if lengths else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), metavar="PATH",
                        help="the project's root (default: .)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/layout.json"), metavar="PATH",
                        help="where the JSON goes (default: bench/results/layout.json)")
    args = parser.parse_args()
    result = measure(args.root)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    biggest = result["largest_files"][0]
    longest = result["longest_functions"][0]
    print(f"layout: {result['total_lines']} lines, largest file {biggest[0]} ({biggest[1]}), "
          f"longest function {longest['name']} ({longest['lines']}), "
          f"median function {result['median_function_lines']} lines -> {args.out}")


if __name__ == "__main__":
    main()
