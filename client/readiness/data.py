"""The site's data: there and readable by this user, and passing `fedclinic site validate`."""

from __future__ import annotations

import os
from pathlib import Path

from client.check import Check


def _walk_files(root: Path) -> tuple[int, int, int]:
    """(files, bytes, unreadable entries) under ``root`` (a file counts as itself)."""
    if root.is_file():
        readable = os.access(root, os.R_OK)
        return 1, root.stat().st_size, 0 if readable else 1
    files = size = unreadable = 0
    errors: list[OSError] = []
    for folder, _, names in os.walk(root, onerror=errors.append):
        for file_name in names:
            path = os.path.join(folder, file_name)
            try:
                size += os.stat(path).st_size
                files += 1
                unreadable += 0 if os.access(path, os.R_OK) else 1
            except OSError:
                unreadable += 1
    return files, size, unreadable + len(errors)


def check_data(data: Path) -> Check:
    name = "site data"
    if not data.exists():
        return Check(name, "error", f"{data} does not exist; pass --data with the site's "
                                    "data file or folder")
    if data.is_dir() and not os.access(data, os.R_OK | os.X_OK):
        return Check(name, "error", f"{data}: this user cannot list the folder; give the "
                                    "site's user read access")
    files, size, unreadable = _walk_files(data)
    summary = f"{data}: {files} file{'s' * (files != 1)}, {size / 1e6:.1f} MB"
    if files == 0:
        return Check(name, "error", f"{summary}: no data files found")
    if unreadable:
        status = "error" if unreadable >= files else "warning"
        return Check(name, status, f"{summary}; {unreadable} entries cannot be read by "
                                   "this user (give the site's user read access)")
    return Check(name, "ok", summary)


def _summary(items: list[str], limit: int = 3) -> str:
    more = f"; ... and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def check_validation(data: Path) -> Check:
    """`client.validate.validate_site_data` on the data (layout detected), in one check."""
    from client.validate import validate_site_data   # numpy, pydicom: only when data is given

    name = "data validation"
    try:
        report = validate_site_data(data)
    except (ValueError, OSError) as exc:
        return Check(name, "error", f"{data}: {exc}")
    errors = [f"{c.name}: {c.detail}" for c in report.errors]
    warnings = [f"{c.name}: {c.detail}" for c in report.warnings]
    hint = f" (details: fedclinic site validate {data})"
    if errors:
        return Check(name, "error", f"{len(errors)} problem(s): {_summary(errors)}{hint}")
    if warnings:
        return Check(name, "warning", f"{len(warnings)} warning(s): "
                                      f"{_summary(warnings)}{hint}")
    return Check(name, "ok", f"{data} passes the site data checks")
