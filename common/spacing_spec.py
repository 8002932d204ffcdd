"""The ``spacing`` setting's grammar: one pixel spacing in mm, or one per axis.

`common.config` validates every RunConfig's ``spacing`` with `parse_spacing`, so this module
takes ConfigError from there at call time (importing it at load time would be circular).
Resampling itself is `common.datasets.spacing`.
"""

from __future__ import annotations

import math

SPACING_HELP = ("'' (off) or a pixel spacing in mm > 0: one number for all axes ('1.0') or one "
                "per axis ('0.8,0.8' for 2D row,col; '2.5,1,1' for 3D slice,row,col)")


def parse_spacing(spacing: str, spatial_dims: int | None = None) -> tuple[float, ...] | None:
    """``"1"`` -> (1.0,), ``"0.8,0.8"`` -> (0.8, 0.8); ``""`` -> None (resampling off).

    With ``spatial_dims`` the result has one value per spatial axis (a single number applies to
    all of them), and a value with another number of axes is rejected.
    """
    from common.config import ConfigError

    if not spacing.strip():
        return None
    try:
        values = tuple(float(part) for part in spacing.split(","))
    except ValueError:
        raise ConfigError(f"spacing={spacing!r}: not numbers; expected {SPACING_HELP}") from None
    if len(values) > 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"spacing={spacing!r}: expected {SPACING_HELP}")
    if spatial_dims is None:
        return values
    if len(values) == 1:
        return values * spatial_dims
    if len(values) != spatial_dims:
        raise ConfigError(f"spacing={spacing!r}: {len(values)} values but spatial_dims="
                          f"{spatial_dims} images have {spatial_dims} axes; give one number or "
                          f"{spatial_dims} ({'row,col' if spatial_dims == 2 else 'slice,row,col'})")
    return values
