"""Scanner / acquisition shift: each simulated hospital images the same anatomy differently.

A site's `AcquisitionProfile` is applied to its images as a deterministic chain that mimics an
imaging pipeline: lose resolution (``resample``), blur by the point-spread function
(``blur_sigma``), map intensities through the scanner's response (``gamma``, then ``scale`` and
``offset``), add detector noise (``noise_std``), and clip to the valid range [0, 1].

Site 0 is always the identity "reference" scanner; other sites draw one of a few named archetypes
with seeded jitter, so two runs with the same seed see the same scanners.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


@dataclass(frozen=True)
class AcquisitionProfile:
    """How one site's scanner distorts an ideal image (identity by default)."""

    name: str
    scale: float = 1.0        # contrast gain applied after gamma
    offset: float = 0.0       # brightness added after scaling
    gamma: float = 1.0        # intensity response x -> x**gamma (<1 brightens mid-tones)
    noise_std: float = 0.0    # std of additive Gaussian detector noise
    blur_sigma: float = 0.0   # Gaussian point-spread function, in pixels, over spatial axes
    resample: float = 1.0     # < 1: downsample by this factor, then upsample back (lost detail)

    def __post_init__(self) -> None:
        checks = (("scale", self.scale > 0, "> 0"), ("gamma", self.gamma > 0, "> 0"),
                  ("noise_std", self.noise_std >= 0, ">= 0"),
                  ("blur_sigma", self.blur_sigma >= 0, ">= 0"),
                  ("resample", 0 < self.resample <= 1, "in (0, 1]"))
        for field_name, ok, accepted in checks:
            if not ok:
                raise ValueError(f"AcquisitionProfile({self.name!r}).{field_name}="
                                 f"{getattr(self, field_name)!r}: expected {accepted}")

    @property
    def is_identity(self) -> bool:
        return (self.scale == 1.0 and self.offset == 0.0 and self.gamma == 1.0
                and self.noise_std == 0.0 and self.blur_sigma == 0.0 and self.resample == 1.0)


REFERENCE = AcquisitionProfile("reference")

# Named scanner archetypes (centre values); `site_profile` jitters each numeric field by up to
# +-15 % so sites sharing an archetype still differ.
ARCHETYPES: tuple[AcquisitionProfile, ...] = (
    AcquisitionProfile("low-dose-noisy", scale=0.85, offset=0.05, noise_std=0.08),
    AcquisitionProfile("bright-high-contrast", scale=1.35, offset=-0.05, gamma=0.75,
                       noise_std=0.01),
    AcquisitionProfile("blurry-lowres", scale=0.95, blur_sigma=0.8, resample=0.5,
                       noise_std=0.01),
    AcquisitionProfile("dark-low-contrast", scale=0.7, offset=0.02, gamma=1.4, noise_std=0.02),
)

_JITTER = 0.15


def site_profile(site: int, seed: int) -> AcquisitionProfile:
    """The scanner of ``site`` (0 = reference) in a run seeded with ``seed``.

    Non-reference sites 1..len(ARCHETYPES) get distinct archetypes in a seed-dependent order;
    further sites cycle through them again. Numeric fields get seeded multiplicative jitter.
    """
    if site < 0:
        raise ValueError(f"site={site!r}: expected a site index >= 0")
    if site == 0:
        return REFERENCE
    order = np.random.default_rng([seed, 0x5CA7]).permutation(len(ARCHETYPES))
    base = ARCHETYPES[int(order[(site - 1) % len(ARCHETYPES)])]
    rng = np.random.default_rng([seed, 0x5CA7, site])
    jitter = rng.uniform(1 - _JITTER, 1 + _JITTER, size=6)
    # gamma and resample jitter toward/away from 1 proportionally to their distance from it
    return AcquisitionProfile(
        name=base.name,
        scale=float(base.scale * jitter[0]),
        offset=float(base.offset * jitter[1]),
        gamma=float(1 + (base.gamma - 1) * jitter[2]),
        noise_std=float(base.noise_std * jitter[3]),
        blur_sigma=float(base.blur_sigma * jitter[4]),
        resample=float(min(1.0, 1 + (base.resample - 1) * jitter[5])),
    )


def apply_profile(images: np.ndarray, profile: AcquisitionProfile, seed: int) -> np.ndarray:
    """Image ``images`` (N,C,H,W) or (N,C,D,H,W), values in [0, 1], with ``profile``.

    Returns a new float32 array of the same shape in [0, 1]; the input is not modified. The noise
    is drawn from ``seed``, so the same call gives the same output.
    """
    images = np.asarray(images)
    if images.ndim not in (4, 5):
        raise ValueError(f"apply_profile: images shape {images.shape}: expected (N,C,H,W) or "
                         f"(N,C,D,H,W)")
    out = np.array(images, dtype=np.float32, copy=True)
    if profile.is_identity or out.size == 0:
        return out
    if profile.resample < 1.0:
        out = _resample(out, profile.resample)
    if profile.blur_sigma > 0:
        sigma = (0.0, 0.0) + (profile.blur_sigma,) * (out.ndim - 2)
        out = ndimage.gaussian_filter(out, sigma=sigma, mode="nearest")
    if profile.gamma != 1.0:
        np.clip(out, 0.0, 1.0, out=out)
        np.power(out, np.float32(profile.gamma), out=out)
    if profile.scale != 1.0 or profile.offset != 0.0:
        out = out * np.float32(profile.scale) + np.float32(profile.offset)
    if profile.noise_std > 0:
        noise = np.random.default_rng(seed).standard_normal(out.shape, dtype=np.float32)
        out += noise * np.float32(profile.noise_std)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def _resample(images: np.ndarray, factor: float) -> np.ndarray:
    """Downsample spatial axes by ``factor`` (area averaging), then interpolate back."""
    spatial = images.shape[2:]
    low = tuple(max(1, int(round(s * factor))) for s in spatial)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    with torch.no_grad():
        x = torch.from_numpy(images)
        x = F.interpolate(x, size=low, mode="area")
        x = F.interpolate(x, size=spatial, mode=mode, align_corners=False)
    return x.numpy().astype(np.float32, copy=False)
