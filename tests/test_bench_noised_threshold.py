"""bench/noised_threshold.py: each rule's threshold is scored on the exact val scores."""

import numpy as np
import pytest

from bench import noised_threshold as nt


def _scores(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n)
    p1 = np.clip(0.55 + 0.3 * labels + rng.normal(0, 0.12, n), 0, 1)   # the best cut is ~0.7
    return np.stack([1 - p1, p1], axis=1), labels


def test_without_noise_the_noised_rules_equal_youden_and_beat_the_argmax():
    probs, labels = _scores()
    got = nt.score_rules(probs, labels, sites=5, sigma=1e-9, draws=3)
    assert set(got) == set(nt.RULES) and len(got["noised10"]) == 3
    assert got["noised50"] == pytest.approx(got["exact50"] * 3)
    assert got["argmax"] == [pytest.approx(nt.balanced_accuracy(probs[:, 1], labels, 0.5))]
    assert got["exact50"][0] > got["argmax"][0] + 0.1     # scores skewed above 0.5


def test_noise_of_the_sites_degrades_the_fine_bins_more():
    probs, labels = _scores(200)
    got = nt.score_rules(probs, labels, sites=5, sigma=10.0, draws=200)
    assert np.mean(got["noised10"]) > np.mean(got["noised50"])
    assert max(max(v) for v in got.values()) <= 1.0


def test_the_gated_rule_reads_the_histograms_only_when_they_stand_out_of_the_noise():
    """At a tiny sigma every gate passes (Youden on 10 bins); at a sigma that buries 400 cases
    (sd 1e4 per cell) a gate of 1 sd or more fails in most draws (pure noise passes it in
    P(both N(0, 1) >= z) <= 3% of them): the argmax, or the prior threshold."""
    probs, labels = _scores()
    quiet = nt.score_rules(probs, labels, sites=5, sigma=1e-9, draws=2, prior=0.8)
    for z in nt.GATES:
        assert quiet[f"gated10_z{z:g}"] == quiet["noised10"]
        assert quiet[f"gatedprior10_z{z:g}"] == quiet["noised10"]
    loud = nt.score_rules(probs, labels, sites=5, sigma=1e4, draws=50, prior=0.8)
    assert loud["prior"] == [pytest.approx(nt.balanced_accuracy(probs[:, 1], labels, 0.8))]
    for z in (z for z in nt.GATES if z >= 1):
        assert np.mean(np.array(loud[f"gated10_z{z:g}"]) == loud["argmax"][0]) >= 0.8
        assert np.mean(np.array(loud[f"gatedprior10_z{z:g}"]) == loud["prior"][0]) >= 0.8


def test_thresholds_from_the_train_split_are_scored_on_val():
    """Train scores drawn like the val ones: Youden on exact train histograms lands on val's
    best cut (~0.7); the prior 0.5 and tiny noise change nothing of that."""
    train, val = _scores(2000), _scores(400)
    got = nt.train_rules(train, val, sites=5, sigma=1e-9, draws=2, prior=0.5)
    assert set(got) == set(nt.TRAIN_RULES) and len(got["train_noised10"]) == 2
    assert got["prior"] == [pytest.approx(nt.balanced_accuracy(val[0][:, 1], val[1], 0.5))]
    assert got["train_exact50"][0] == pytest.approx(got["val_exact50"][0], abs=0.02)
    assert got["train_exact50"][0] > got["prior"][0] + 0.1
    assert got["train_noised50"] == pytest.approx(got["train_exact50"] * 2)
