"""Resize an image or volume to a cube of side ``size`` (every loader's last step without a
target spacing)."""

from __future__ import annotations

import numpy as np


def resize(image: np.ndarray, size: int, mode: str = "linear") -> np.ndarray:
    """(H, W) or (D, H, W) -> (1, size, ...) float32 with MONAI's Resize (anti-aliased when
    shrinking); ``mode="nearest"`` for label masks."""
    from monai.transforms import Resize

    dims = image.ndim
    interp = "nearest" if mode == "nearest" else ("bilinear" if dims == 2 else "trilinear")
    transform = Resize((size,) * dims, mode=interp, anti_aliasing=mode != "nearest")
    out = np.asarray(transform(np.ascontiguousarray(image[None], dtype=np.float32)))
    return out.astype(np.float32) if mode == "nearest" else np.clip(out, 0, 1).astype(np.float32)
