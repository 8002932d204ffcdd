"""``by-tag:KEYWORD``: one site per distinct value of a per-sample DICOM header tag (no randomness)."""

from __future__ import annotations

import numpy as np

from common.config import ConfigError
from common.partition_spec import PartitionSpec
from common.datasets.base import DataError, Dataset, Split
from common.partitions.base import check_site_sizes


def tag_values(dataset: Dataset, pool: Split, tag: str) -> np.ndarray:
    """The per-sample values of ``tag`` in ``pool``; DataError naming the tags there are."""
    if pool.tags is None:
        raise DataError(f"partition='by-tag:{tag}': dataset {dataset.name!r} has no per-sample "
                        f"tags; by-tag partitions need DICOM data (dataset=dicom)")
    if tag not in pool.tags:
        raise DataError(f"partition='by-tag:{tag}': dataset {dataset.name!r} has no {tag!r} tag "
                        f"per sample; it has {', '.join(sorted(pool.tags)) or 'none'}")
    return pool.tags[tag]


def partition_by_tag(values: np.ndarray, num_sites: int, tag: str) -> list[np.ndarray]:
    """One sorted index array per distinct tag value (sites ordered by value); every sample is
    placed. ``num_sites`` must equal the number of distinct values (a missing value, '', counts
    as one value)."""
    values = np.asarray(values).astype(str)
    distinct = sorted(set(values.tolist()))
    if len(distinct) != num_sites:
        shown = ", ".join(repr(v) if v else "'' (missing)" for v in distinct[:20])
        more = f" and {len(distinct) - 20} more" if len(distinct) > 20 else ""
        raise ConfigError(f"partition='by-tag:{tag}' makes one site per {tag} value, and the "
                          f"data holds {len(distinct)}: {shown}{more}; but sites={num_sites}. "
                          f"Set sites={len(distinct)}")
    parts = [np.flatnonzero(values == v).astype(np.int64) for v in distinct]
    check_site_sizes(parts, PartitionSpec(label="by-tag", tag=tag), f"by-tag:{tag}")
    return parts
