"""Which dataset a site trains on, as a sha256 nothing the server sends can change: the key of
the site's lifetime privacy ledger (client.ledger).

Deployment: the raw files under the site's `data-path` (a file or a folder): sorted relative
paths, sizes and content sha256. The server's preprocessing settings (image size, window,
spacing, ...) are not part of it: the same patients are the same dataset however they are
resized. Left out, because they are not data: hidden files and folders (names starting with
".") and the artefacts of fedclinic's preprocessed-array cache (its CACHEDIR.TAG and its
``ab/<sha256>.npy`` entries beside one), whose place a run config can choose. Nothing else is
left out, so a server that makes the site write a cache into its data folder changes nothing.
Leaving a file out can only make two datasets look alike, which charges more, never less.
Each file's hash is cached by (relative path, size, mtime_ns) in the site's state folder, so a
large DICOM folder is read once, not once per run.

A limit to know: any change of the data (one patient added) is a new fingerprint, hence a new
ledger, although most patients are the same; the old dataset's spend still counts for them.
`fedclinic site status` lists every dataset's spend, old ones included.

Simulation (node config `partition-id`): the site's partition arrays (train and test images,
labels and masks), which the run config does decide: a simulated site is what the run makes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Mapping

import numpy as np

from client.ledger import LEDGER_DIR, LEDGER_PATH
from client.site import DATA_PATH, PARTITION_ID, LocalSite
from common.config import ConfigError
from common.datasets.cache import TAG_FILE, file_digest
from common.private_files import write_private

FILES_VERSION = "fedclinic-data-fingerprint/1"
PARTITION_VERSION = "fedclinic-partition-fingerprint/1"
CACHE_FILE = "fingerprint-cache.json"
_CACHE_ENTRY = re.compile(r"[0-9a-f]{64}\.npy")

Known = dict[str, list]   # relative path -> [size, mtime_ns, sha256]


def data_fingerprint(site: LocalSite, node_config: Mapping[str, object]) -> str:
    """sha256 hex of the dataset this site trains on (see the module's docstring)."""
    if PARTITION_ID in node_config:
        return partition_fingerprint(site)
    if node_config.get(DATA_PATH):
        return files_fingerprint(Path(str(node_config[DATA_PATH])), cache_file(node_config))
    raise ConfigError(f"node config has neither '{PARTITION_ID}' (simulation) nor "
                      f"'{DATA_PATH}': nothing to key the privacy ledger by")


def cache_file(node_config: Mapping[str, object]) -> Path | None:
    """The hash cache, in the site's state folder: next to `ledger-dir` (<state>/ledgers ->
    <state>), else in the folder of `ledger-path`; None without either (hash every time)."""
    if node_config.get(LEDGER_DIR):
        return Path(str(node_config[LEDGER_DIR])).parent / CACHE_FILE
    if node_config.get(LEDGER_PATH):
        return Path(str(node_config[LEDGER_PATH])).parent / CACHE_FILE
    return None


def partition_fingerprint(site: LocalSite) -> str:
    digest = hashlib.sha256(PARTITION_VERSION.encode() + b"\n")
    for name, split in (("train", site.train), ("test", site.test)):
        for part in ("images", "labels", "masks"):
            array = getattr(split, part)
            if array is None:
                continue
            array = np.ascontiguousarray(array)
            digest.update(f"{name}/{part}/{array.dtype.str}/{array.shape}\n".encode())
            digest.update(array.reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def files_fingerprint(root: Path, cache: Path | None = None) -> str:
    """sha256 over (relative path, size, content sha256) of every data file under ``root``."""
    root = root.expanduser().resolve()
    files = data_files(root)
    if not files:
        raise ConfigError(f"{root}: no data files to fingerprint (the site's privacy ledger is "
                          f"keyed by them)")
    known = _load_cache(cache, root)
    now: Known = {}
    for rel, path in files:
        stat = path.stat()              # before reading: a file changed meanwhile is re-read
        old = known.get(rel)
        if old is not None and old[:2] == [stat.st_size, stat.st_mtime_ns]:
            now[rel] = old
        else:
            now[rel] = [stat.st_size, stat.st_mtime_ns, file_digest(path)]
    if cache is not None and now != known:
        _save_cache(cache, root, now)
    digest = hashlib.sha256(FILES_VERSION.encode() + b"\n")
    for rel in sorted(now):
        size, _, sha = now[rel]
        digest.update(f"{rel}\0{size}\0{sha}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def data_files(root: Path) -> list[tuple[str, Path]]:
    """(relative posix path, path) of the data files under ``root`` (itself, if a file)."""
    if root.is_file():
        return [(root.name, root)]
    if not root.is_dir():
        raise ConfigError(f"{root}: the site's data-path does not exist")
    found: list[tuple[str, Path]] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            path = Path(folder) / name
            if not name.startswith(".") and not _cache_artefact(path) and path.is_file():
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def _cache_artefact(path: Path) -> bool:
    """The array cache's tag file, or one of its entries (``<tagged>/ab/ab....npy``)."""
    if path.name == TAG_FILE:
        return True
    return (bool(_CACHE_ENTRY.fullmatch(path.name)) and path.name[:2] == path.parent.name
            and (path.parent.parent / TAG_FILE).is_file())


def _load_cache(cache: Path | None, root: Path) -> Known:
    """The cached hashes for ``root``; an unreadable cache only means hashing again."""
    if cache is None:
        return {}
    try:
        data = json.loads(cache.read_text())
        known = data["roots"][str(root)]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not isinstance(known, dict):
        return {}
    return {rel: row for rel, row in known.items()
            if isinstance(row, list) and len(row) == 3 and isinstance(row[2], str)}


def _save_cache(cache: Path, root: Path, known: Known) -> None:
    try:
        data = json.loads(cache.read_text())
        roots = data["roots"] if isinstance(data.get("roots"), dict) else {}
    except (OSError, ValueError, AttributeError):
        roots = {}
    roots[str(root)] = known
    write_private(cache, (json.dumps({"version": 1, "roots": roots}, sort_keys=True) + "\n")
                  .encode())
