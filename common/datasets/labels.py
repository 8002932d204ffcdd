"""``labels.csv``: which DICOM study / series / image / file has which class, and which split.

The header names exactly one key column (one of `KEY_COLUMNS`, matched case-insensitively), a
``label`` column and optionally a ``split`` column (``train``, ``val`` or ``test``); other columns
are ignored. Blank lines and whitespace around cells are ignored and a UTF-8 byte-order mark is
tolerated. Keys are unique, ``path`` keys as `common.datasets.paths.normal_path` spells them
(``x.dcm``, ``./x.dcm`` and ``sub/../x.dcm`` are one file; the loader also folds symbolic and hard
links to one file, `common.datasets.dicom.keys`). Class ids: if every label is an integer the
classes are the distinct integers in numeric order, otherwise the distinct label strings in
sorted order.

Example::

    SeriesInstanceUID,label,split
    1.2.840.113619.2.55.3.1,pneumonia,train
    1.2.840.113619.2.55.3.2,normal,test
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.datasets.base import DataError
from common.datasets.paths import OutsideDataFolder, normal_path
from common.datasets.reading import reading

KEY_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "path")
LABELS_FILE = "labels.csv"
LABEL_COLUMN = "label"
SPLIT_COLUMN = "split"
SPLITS = ("train", "val", "test")
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class Labels:
    key_column: str                       # one of KEY_COLUMNS (canonical spelling)
    keys: tuple[str, ...]                 # one per row, unique
    labels: tuple[str, ...]               # one per row, as written (whitespace stripped)
    class_names: tuple[str, ...]          # class id -> name
    splits: tuple[str, ...] | None        # one of SPLITS per row, or None without a split column
    lines: tuple[int, ...] = ()           # source line of each row (for error messages)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def integer_labels(self) -> bool:
        return all(_INTEGER.fullmatch(label) for label in self.labels)

    def class_ids(self) -> np.ndarray:
        """int64 class id per row (index into ``class_names``)."""
        if self.integer_labels:
            index = {int(name): i for i, name in enumerate(self.class_names)}
            return np.array([index[int(label)] for label in self.labels], dtype=np.int64)
        index = {name: i for i, name in enumerate(self.class_names)}
        return np.array([index[label] for label in self.labels], dtype=np.int64)


def read_labels(path: Path) -> Labels:
    """Parse the labels file at ``path`` (UTF-8, optional BOM)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: not found; a DICOM folder needs a labels.csv with a key column "
                        f"({' | '.join(KEY_COLUMNS)}) and a '{LABEL_COLUMN}' column") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 "
                        f"CSV") from None
    with reading(path):
        return parse_labels(text, source=str(path))


def parse_labels(text: str, source: str = "labels.csv") -> Labels:
    """Parse CSV text; any problem raises `DataError` naming ``source`` and the line."""
    rows = _rows(text.removeprefix("\ufeff"), source)
    if not rows:
        raise DataError(f"{source}: empty; expected a header with a key column "
                        f"({' | '.join(KEY_COLUMNS)}) and a '{LABEL_COLUMN}' column")
    header_line, header = rows[0]
    columns = _columns(header, header_line, source)
    key_col, label_col, split_col = columns
    keys: list[str] = []
    labels: list[str] = []
    splits: list[str] = []
    lines: list[int] = []
    seen: dict[str, tuple[int, str]] = {}
    is_path = _canonical_key(header[key_col]) == "path"
    for line, cells in rows[1:]:
        if len(cells) != len(header):
            raise DataError(f"{source}: line {line}: {len(cells)} cells but the header on line "
                            f"{header_line} has {len(header)}")
        key, label = cells[key_col], cells[label_col]
        key_name = header[key_col]
        if not key:
            raise DataError(f"{source}: line {line}: empty {key_name}")
        if not label:
            raise DataError(f"{source}: line {line}: empty {LABEL_COLUMN} for {key_name}={key!r}")
        same = _same_file_key(key) if is_path else key
        if same in seen:
            first, spelled = seen[same]
            spelling = "" if spelled == key else f" spelled {spelled!r} there"
            raise DataError(f"{source}: line {line}: duplicate {key_name} {key!r} (first on line "
                            f"{first}{spelling}); one file is one sample: keep one row")
        seen[same] = (line, key)
        if split_col is not None:
            splits.append(_split_value(cells[split_col], line, source))
        keys.append(key)
        labels.append(label)
        lines.append(line)
    if not keys:
        raise DataError(f"{source}: header only, no rows")
    return Labels(key_column=_canonical_key(header[key_col]), keys=tuple(keys),
                  labels=tuple(labels), class_names=_class_names(labels),
                  splits=None if split_col is None else tuple(splits), lines=tuple(lines))


def _rows(text: str, source: str) -> list[tuple[int, list[str]]]:
    """Non-blank CSV records as (first line number, stripped cells)."""
    out = []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    line = 1
    try:
        for record in reader:
            cells = [cell.strip() for cell in record]
            if any(cells):
                out.append((line, cells))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{source}: line {reader.line_num}: malformed CSV ({exc})") from None
    return out


def _same_file_key(key: str) -> str:
    """The spelling two ``path`` keys naming one file share (an escaping path stays as written:
    the loader refuses its row)."""
    try:
        return normal_path(key)
    except OutsideDataFolder:
        return key


def _canonical_key(name: str) -> str:
    return next(k for k in KEY_COLUMNS if k.lower() == name.lower())


def _columns(header: list[str], line: int, source: str) -> tuple[int, int, int | None]:
    lowered = [h.lower() for h in header]
    for i, name in enumerate(lowered):
        if name and name in lowered[:i]:
            raise DataError(f"{source}: line {line}: column {header[i]!r} appears twice")
    found = [i for i, name in enumerate(lowered) if name in {k.lower() for k in KEY_COLUMNS}]
    if len(found) != 1:
        what = ", ".join(header[i] for i in found) if found else "none"
        raise DataError(f"{source}: line {line}: the header must have exactly one key column "
                        f"({' | '.join(KEY_COLUMNS)}); found {what} in header "
                        f"{', '.join(header)!r}")
    if LABEL_COLUMN not in lowered:
        raise DataError(f"{source}: line {line}: no '{LABEL_COLUMN}' column in header "
                        f"{', '.join(header)!r}")
    split = lowered.index(SPLIT_COLUMN) if SPLIT_COLUMN in lowered else None
    return found[0], lowered.index(LABEL_COLUMN), split


def _split_value(value: str, line: int, source: str) -> str:
    if value.lower() not in SPLITS:
        raise DataError(f"{source}: line {line}: {SPLIT_COLUMN}={value!r}; expected one of "
                        f"{', '.join(SPLITS)}")
    return value.lower()


def _class_names(labels: list[str]) -> tuple[str, ...]:
    if all(_INTEGER.fullmatch(label) for label in labels):
        return tuple(str(v) for v in sorted({int(label) for label in labels}))
    return tuple(sorted(set(labels)))
