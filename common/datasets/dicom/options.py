"""The run-config fields a DICOM folder load depends on (also the registry's cache key)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.config import RunConfig

# Per-sample header values kept for `by-tag:KEYWORD` partitions (plus the one the run asks for).
DEFAULT_TAGS = ("Manufacturer", "ManufacturerModelName", "InstitutionName", "StationName",
                "Modality")


@dataclass(frozen=True)
class DicomOptions:
    """The run-config fields a DICOM load depends on (the registry caches by these)."""

    window: str = ""
    spacing: str = ""
    size: int = 28
    spatial_dims: int = 2
    strict: bool = False
    cache_dir: str = ""
    test_fraction: float = 0.2
    seed: int = 0
    tags: tuple[str, ...] = DEFAULT_TAGS

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "DicomOptions":
        tag = cfg.partition_spec.tag
        tags = DEFAULT_TAGS + ((tag,) if tag and tag not in DEFAULT_TAGS else ())
        return cls(window=cfg.dicom_window, spacing=cfg.spacing, size=cfg.image_size,
                   spatial_dims=cfg.spatial_dims,
                   strict=cfg.strict, cache_dir=cfg.cache_dir, test_fraction=cfg.test_fraction,
                   seed=cfg.seed, tags=tags)
