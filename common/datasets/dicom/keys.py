"""Which DICOM files a ``labels.csv`` key names: the one rule the loader trains by and
`fedclinic site validate` counts by (`match_rows`).

A file answers to its path relative to the folder (key column ``path``, always with ``/``) or to
the value of its header attribute named by the key column (``SOPInstanceUID``,
``SeriesInstanceUID``, ``StudyInstanceUID``). A ``path`` key is looked up as
`common.datasets.paths.normal_path` spells it (``\\`` as ``/``, no ``./`` or ``a/../`` hops);
one that leaves the data folder is refused. A second name of one file (a symbolic or hard link,
`scan.FolderScan.aliases`) names that file, and a file is one sample: a later row naming a file
an earlier row already has is skipped, naming both lines.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pydicom

from common.datasets.base import DataError
from common.datasets.dicom.header import DicomFileError
from common.datasets.dicom.scan import FolderScan
from common.datasets.labels import LABELS_FILE, Labels
from common.datasets.paths import normal_path


@dataclass(frozen=True)
class RowMatch:
    """One labels.csv row: the files it names (in scan order), or why it names none."""

    row: int
    line: int
    key: str
    files: tuple[Path, ...] = ()
    problem: DataError | None = None     # a DicomFileError when the named file is a bad file


def relative_path(path: Path, root: Path) -> str:
    """``path`` relative to the data folder ``root``, with ``/`` (the ``path`` key of a file)."""
    return Path(path).relative_to(root).as_posix()


def file_key(key_column: str, path: Path, header: pydicom.Dataset, root: Path) -> str:
    """The key a file answers to under ``key_column`` ('' when its header lacks the attribute)."""
    if key_column == "path":
        return relative_path(path, root)
    return str(header.get(key_column, "") or "").strip()


def lookup_key(key: str, key_column: str) -> str:
    """A labels.csv key as `file_key` spells it; `OutsideDataFolder` for a ``path`` key that
    leaves the data folder."""
    if key_column != "path":
        return key
    return normal_path(key)


def group_by_key(key_column: str, headers: dict[Path, pydicom.Dataset], root: Path,
                 aliases: dict[Path, Path] | None = None) -> dict[str, list[Path]]:
    """Key -> the files that answer to it (in ``headers`` order); files without a key are left
    out. With ``path`` keys, an alias's path names the file it is an alias of."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for path, header in headers.items():
        key = file_key(key_column, path, header, root)
        if key:
            groups[key].append(path)
    if key_column == "path":
        for alias, real in (aliases or {}).items():
            if real in headers:
                groups[relative_path(alias, root)] = [real]
    return groups


def match_rows(labels: Labels, scan: FolderScan, root: Path) -> list[RowMatch]:
    """Every row's files, or its problem: outside the folder, a bad file, no such file, or the
    same file as an earlier row."""
    column = labels.key_column
    groups = group_by_key(column, scan.headers, root, scan.aliases)
    bad = _bad_by_path(scan, root) if column == "path" else {}
    owner: dict[Path, int] = {}          # file -> line of the row that has it
    out = []
    for row, key in enumerate(labels.keys):
        line = labels.lines[row] if labels.lines else row + 2
        match = _match(row, line, key, column, groups, bad, owner, root)
        if match.problem is None:
            owner.update((f, line) for f in match.files)
        out.append(match)
    return out


def _match(row: int, line: int, key: str, column: str, groups: dict[str, list[Path]],
           bad: dict[str, tuple[Path, str]], owner: dict[Path, int], root: Path) -> RowMatch:
    where = f"{LABELS_FILE} line {line}"
    try:
        lookup = lookup_key(key, column)
    except DataError as exc:
        return RowMatch(row, line, key, problem=DataError(f"{where}: {column} {exc}"))
    files = groups.get(lookup)
    if files:
        taken = next((f for f in files if f in owner), None)
        if taken is not None:
            same = relative_path(taken, root)
            how = "" if same == lookup else f" ({same}; a link or second name of it)"
            return RowMatch(row, line, key, problem=DataError(
                f"{where}: {column} {key!r} names the same file{how} as line {owner[taken]}; "
                f"one file is one sample: the row is skipped, keep one row per file"))
        return RowMatch(row, line, key, tuple(files))
    if lookup in bad:
        return RowMatch(row, line, key, problem=DicomFileError(*bad[lookup]))
    return RowMatch(row, line, key, problem=DataError(
        f"{where}: no readable DICOM file under {root} has {column} {key!r}"))


def _bad_by_path(scan: FolderScan, root: Path) -> dict[str, tuple[Path, str]]:
    """Relative path (aliases included) -> (bad file, reason)."""
    bad = {relative_path(p, root): (p, reason) for p, reason in scan.bad}
    for alias, real in scan.aliases.items():
        real_rel = relative_path(real, root)
        if real_rel in bad:
            bad[relative_path(alias, root)] = bad[real_rel]
    return bad
