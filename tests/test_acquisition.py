"""Acquisition (scanner) profiles: identity, range, determinism, and what each parameter does."""

from __future__ import annotations

import numpy as np
import pytest

from common.acquisition import ARCHETYPES, AcquisitionProfile, apply_profile, site_profile


def _images(shape: tuple[int, ...] = (6, 1, 16, 16), seed: int = 0) -> np.ndarray:
    """Smooth random images in [0.2, 0.8] with some fine detail."""
    rng = np.random.default_rng(seed)
    return (0.2 + 0.6 * rng.random(shape)).astype(np.float32)


def _high_freq_energy(images: np.ndarray) -> float:
    """Energy of neighbouring-pixel differences along the last axis."""
    return float(np.mean(np.diff(images, axis=-1) ** 2))


@pytest.mark.parametrize("shape", [(4, 1, 12, 12), (3, 3, 10, 10), (2, 1, 8, 8, 8)])
def test_identity_profile_is_a_noop(shape):
    images = _images(shape)
    out = apply_profile(images, site_profile(0, seed=3), seed=1)
    assert site_profile(0, seed=3).is_identity
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_array_equal(out, images)
    assert out is not images


@pytest.mark.parametrize("shape", [(4, 1, 16, 16), (2, 1, 12, 12, 12)])
@pytest.mark.parametrize("site", [1, 2, 3, 4, 5])
def test_site_profiles_stay_in_range_and_are_deterministic(shape, site):
    images = _images(shape)
    profile = site_profile(site, seed=7)
    out = apply_profile(images, profile, seed=11)
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(out, apply_profile(images, profile, seed=11))
    assert site_profile(site, seed=7) == profile
    assert not np.array_equal(out, images)


def test_site_profiles_differ_across_sites_and_use_each_archetype():
    profiles = [site_profile(s, seed=0) for s in range(1, len(ARCHETYPES) + 1)]
    assert sorted(p.name for p in profiles) == sorted(a.name for a in ARCHETYPES)
    assert all(not p.is_identity for p in profiles)
    # a later site reusing an archetype gets different jitter
    again = site_profile(len(ARCHETYPES) + 1, seed=0)
    first = next(p for p in profiles if p.name == again.name)
    assert again != first
    # another seed assigns a different archetype order or different jitter
    assert [site_profile(s, seed=1) for s in range(1, 5)] != profiles


def test_noise_depends_on_seed():
    images = _images()
    profile = AcquisitionProfile("noisy", noise_std=0.05)
    assert not np.array_equal(apply_profile(images, profile, 0), apply_profile(images, profile, 1))


def test_scale_and_offset_move_the_mean():
    images = _images()
    brighter = apply_profile(images, AcquisitionProfile("b", offset=0.1), seed=0)
    np.testing.assert_allclose(brighter.mean(), images.mean() + 0.1, atol=1e-5)
    dimmer = apply_profile(images, AcquisitionProfile("d", scale=0.5), seed=0)
    np.testing.assert_allclose(dimmer.mean(), images.mean() * 0.5, atol=1e-5)


def test_gamma_changes_mid_tones():
    images = _images()
    assert apply_profile(images, AcquisitionProfile("g", gamma=0.5), 0).mean() > images.mean() + 0.05
    assert apply_profile(images, AcquisitionProfile("g", gamma=2.0), 0).mean() < images.mean() - 0.05


def test_noise_raises_std_of_a_flat_image():
    flat = np.full((4, 1, 16, 16), 0.5, dtype=np.float32)
    out = apply_profile(flat, AcquisitionProfile("n", noise_std=0.05), seed=0)
    assert flat.std() == 0.0
    assert 0.04 < out.std() < 0.06


@pytest.mark.parametrize("shape", [(4, 1, 16, 16), (2, 1, 10, 10, 10)])
def test_blur_lowers_high_frequency_energy_only_spatially(shape):
    images = _images(shape)
    out = apply_profile(images, AcquisitionProfile("blur", blur_sigma=1.0), seed=0)
    assert _high_freq_energy(out) < 0.3 * _high_freq_energy(images)
    # blur never mixes samples: a sample that is constant stays constant
    images[0] = 0.5
    assert np.allclose(apply_profile(images, AcquisitionProfile("blur", blur_sigma=1.0), 0)[0], 0.5)


@pytest.mark.parametrize("shape", [(4, 1, 16, 16), (2, 1, 12, 12, 12)])
def test_resample_loses_detail_but_keeps_shape_and_mean(shape):
    images = _images(shape)
    out = apply_profile(images, AcquisitionProfile("lowres", resample=0.5), seed=0)
    assert out.shape == images.shape
    assert _high_freq_energy(out) < 0.5 * _high_freq_energy(images)
    np.testing.assert_allclose(out.mean(), images.mean(), atol=0.02)


@pytest.mark.parametrize("field, value", [("scale", 0.0), ("gamma", -1.0), ("noise_std", -0.1),
                                          ("blur_sigma", -1.0), ("resample", 0.0),
                                          ("resample", 1.5)])
def test_invalid_profile_fields_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        AcquisitionProfile("bad", **{field: value})


def test_bad_image_rank_and_site_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        apply_profile(np.zeros((4, 16, 16), np.float32), site_profile(1, 0), seed=0)
    with pytest.raises(ValueError, match="site=-1"):
        site_profile(-1, seed=0)
