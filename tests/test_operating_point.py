"""The operating point, chosen from validation statistics only: thresholds from the sites'
score histograms (Youden's J, a target sensitivity), the class-prior logit adjustment, the
positive class from the dataset's label names, and the metrics at the point."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from common.config import ConfigError, RunConfig
from common.datasets.base import TaskInfo
from common.operating_point import (
    ARGMAX, HIST_BINS, LOGIT_ADJUSTMENT, NOISED_HIST_BINS, THRESHOLD, OperatingPoint,
    PositiveClass, coarsened,
    choose_operating_point, choose_threshold, class_log_prior, histogram_auc, metrics_at,
    positive_class, score_bins, score_histograms,
)
from common.validation_stats import combine, counts_metrics, counts_of, validation_counts

BINARY = TaskInfo("binary", 2, 2, 1, 28, class_names=("normal", "pneumonia"))
BREAST = TaskInfo("binary", 2, 2, 1, 28, class_names=("malignant", "normal, benign"))


def _hist() -> np.ndarray:
    """Label 0: 4 cases in bin 10, 3 in bin 30, 1 in bin 45; label 1: 1 in bin 20, 5 in bin
    35, 2 in bin 48 (bins of P(label 1), 50 on [0, 1])."""
    h = np.zeros((2, HIST_BINS))
    h[0, 10], h[0, 30], h[0, 45] = 4, 3, 1
    h[1, 20], h[1, 35], h[1, 48] = 1, 5, 2
    return h


def test_bins_are_fixed_and_the_histograms_count_per_true_label():
    assert list(score_bins(np.array([0.0, 0.019, 0.02, 0.62, 0.999, 1.0]))) == [0, 0, 1, 31,
                                                                                  49, 49]
    labels = np.array([0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.1, 0.9, 0.95, 1.0])
    h = score_histograms(labels, np.stack([1 - p1, p1], axis=1))
    assert h.shape == (2, HIST_BINS) and h.sum() == 5
    assert h[0, 5] == 2 and h[1, 45] == 1 and h[1, 47] == 1 and h[1, 49] == 1


def test_youden_threshold_matches_the_hand_computed_case():
    # By hand: for thresholds k/50 with k in 31..35 label 0 has 7 of 8 below (spec 7/8) and
    # label 1 has 7 of 8 at or above (sens 7/8): J = 0.75, the largest (k in 11..20: 0.5;
    # 21..30: 0.375; 36..45: 0.125). Ties go to the threshold nearest 0.5: k = 31.
    point = choose_threshold(_hist(), positive=1)
    assert point.threshold == pytest.approx(31 / 50)
    assert (point.sensitivity, point.specificity) == (pytest.approx(7 / 8), pytest.approx(7 / 8))
    assert point.youden == pytest.approx(0.75)
    # J does not depend on which class is positive: the same threshold for label 0.
    flipped = choose_threshold(_hist(), positive=0)
    assert flipped.threshold == point.threshold
    assert flipped.sensitivity == pytest.approx(7 / 8)      # label-0 cases below 0.62


def test_target_sensitivity_threshold_is_the_most_specific_one_reaching_it():
    # positive label 1, target 0.95: only k <= 20 keep every positive (sens 1); of these
    # k in 11..20 are the most specific (spec 4/8); nearest 0.5: k = 20.
    point = choose_threshold(_hist(), positive=1, target_sensitivity=0.95)
    assert point.threshold == pytest.approx(20 / 50)
    assert point.sensitivity == 1.0 and point.specificity == pytest.approx(0.5)
    # target 0.8: sens 7/8 holds up to k = 35; the most specific are 31..35: k = 31.
    assert choose_threshold(_hist(), 1, 0.8).threshold == pytest.approx(31 / 50)
    # positive label 0, target 0.95: every label-0 case must fall below the threshold (k >= 46);
    # of those, k in 46..48 keep 2 of 8 label-1 cases above (spec 2/8): k = 46.
    zero = choose_threshold(_hist(), positive=0, target_sensitivity=0.95)
    assert zero.threshold == pytest.approx(46 / 50)
    assert zero.sensitivity == 1.0 and zero.specificity == pytest.approx(2 / 8)


def test_auc_from_histograms_is_the_pairwise_count():
    # label-1 case in bin 20 beats 4 label-0 cases; each of 5 in bin 35 beats 7; each of 2 in
    # bin 48 beats 8: 4 + 35 + 16 = 55 of 64 pairs.
    assert histogram_auc(_hist()) == pytest.approx(55 / 64)
    mids = (np.arange(HIST_BINS) + 0.5) / HIST_BINS
    y = np.concatenate([np.zeros(8), np.ones(8)])
    s = np.concatenate([np.repeat(mids, _hist()[0].astype(int)),
                        np.repeat(mids, _hist()[1].astype(int))])
    assert histogram_auc(_hist()) == pytest.approx(roc_auc_score(y, s))
    tied = np.zeros((2, HIST_BINS))
    tied[:, 7] = 3
    assert histogram_auc(tied) == 0.5                       # one bin: every pair a tie
    assert math.isnan(histogram_auc(np.zeros((2, HIST_BINS))))


def test_a_missing_class_or_noise_below_zero_is_handled():
    h = _hist()
    h[1] = 0
    assert choose_threshold(h, 1) is None
    point = choose_operating_point(BINARY, h, target_sensitivity=0.0,
                                   positive=positive_class(BINARY), source="test")
    assert point.kind == ARGMAX and "lack one of the classes" in point.skipped
    noisy = _hist() - 0.4                                  # noised counts: clamped at 0
    assert choose_threshold(noisy, 1).threshold == pytest.approx(31 / 50)


def test_logit_adjustment_by_hand():
    # counts 80/15/5 -> Laplace prior 81/103, 16/103, 6/103. Row p = (0.6, 0.3, 0.1):
    # p / prior = 0.763, 1.931, 1.717 -> class 1 (argmax would say 0); row (0.9, 0.08, 0.02):
    # 1.144, 0.515, 0.343 -> class 0.
    cm = np.array([[70, 8, 2], [5, 9, 1], [1, 1, 3]])          # rows sum to 80, 15, 5
    assert np.allclose(np.exp(class_log_prior(cm.sum(axis=1))), [81 / 103, 16 / 103, 6 / 103])
    task = TaskInfo("multiclass", 3, 2, 1, 28)
    point = choose_operating_point(task, cm, target_sensitivity=0.0, positive=None,
                                   source="test")
    assert point.kind == LOGIT_ADJUSTMENT
    probs = np.array([[0.6, 0.3, 0.1], [0.9, 0.08, 0.02]])
    assert list(point.predict(probs)) == [1, 0]
    assert list(probs.argmax(axis=1)) == [0, 0]


def test_the_positive_class_comes_from_the_label_names():
    assert positive_class(BINARY) == PositiveClass(1, "pneumonia", "the dataset's label names")
    assert positive_class(BREAST).index == 0 and positive_class(BREAST).name == "malignant"
    nodule = TaskInfo("binary", 2, 3, 1, 28, class_names=("benign", "malignant"))
    assert positive_class(nodule).index == 1
    adrenal = TaskInfo("binary", 2, 3, 1, 28, class_names=("normal", "hyperplasia"))
    assert positive_class(adrenal).name == "hyperplasia"
    unnamed = positive_class(TaskInfo("binary", 2, 2, 1, 28, class_names=("0", "1")))
    assert unnamed.index == 1 and "--positive-class" in unnamed.source
    assert positive_class(BREAST, "Normal, Benign").index == 1
    assert positive_class(BREAST, "0").name == "malignant"
    with pytest.raises(ConfigError, match=r"positive_class='tumour'.*0 'malignant'"):
        positive_class(BREAST, "tumour")
    with pytest.raises(ConfigError, match="applies to binary tasks"):
        positive_class(TaskInfo("multiclass", 3, 2, 1, 28), "x")
    assert positive_class(TaskInfo("multiclass", 3, 2, 1, 28)) is None
    assert RunConfig(positive_class="malignant", target_sensitivity=0.9,
                     patience=3).positive_class == "malignant"
    with pytest.raises(ConfigError, match="target_sensitivity"):
        RunConfig(target_sensitivity=1.5)


def test_the_finding_flips_sensitivity_for_a_dataset_whose_finding_is_label_0():
    """Breast: label 0 is malignant. A model that calls every case 'normal, benign' (label 1)
    has sensitivity 1.0 under the label-1 convention, and 0.0 for the finding."""
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    probs = np.tile([0.2, 0.8], (7, 1))                   # everything called label 1
    at_argmax = OperatingPoint(ARGMAX, "", positive=positive_class(BREAST))
    m = metrics_at(at_argmax, "binary", labels, probs)
    assert m["sensitivity"] == 0.0 and m["specificity"] == 1.0 and m["threshold"] == 0.5
    label1 = OperatingPoint(ARGMAX, "", positive=PositiveClass(1, "normal, benign", "x"))
    assert metrics_at(label1, "binary", labels, probs)["sensitivity"] == 1.0
    # a threshold on P(label 1) of 0.9 calls everything label 0, i.e. malignant: sens 1.
    high = OperatingPoint(THRESHOLD, "", threshold=0.9, positive=positive_class(BREAST))
    m = metrics_at(high, "binary", labels, probs)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 0.0
    assert m["threshold"] == pytest.approx(0.1)            # as a rule on P(malignant) > 0.1
    assert "call 'malignant' when P(malignant) > 0.10" in high.describe()


def test_metrics_at_a_threshold_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p1 = np.array([0.1, 0.3, 0.5, 0.7, 0.4, 0.6, 0.8, 0.9])
    probs = np.stack([1 - p1, p1], axis=1)
    point = OperatingPoint(THRESHOLD, "", threshold=0.55, positive=positive_class(BINARY))
    m = metrics_at(point, "binary", labels, probs)
    # called pneumonia: 0.7 (a normal case), 0.6, 0.8, 0.9 -> sens 3/4, spec 3/4
    assert (m["sensitivity"], m["specificity"]) == (0.75, 0.75)
    assert m["balanced_accuracy"] == 0.75 and m["accuracy"] == 0.75
    assert m["auc"] == pytest.approx(roc_auc_score(labels, p1))
    assert m["threshold"] == 0.55
    normal_only = metrics_at(point, "binary", labels[:4], probs[:4])
    assert math.isnan(normal_only["sensitivity"]) and normal_only["specificity"] == 0.75


def test_site_counts_travel_as_metrics_and_add_up():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    p1 = rng.random(40)
    counts = validation_counts("binary", labels, np.stack([1 - p1, p1], axis=1))
    sent = counts_metrics("binary", counts)
    assert len(sent) == 2 * HIST_BINS and sum(sent.values()) == 40
    assert np.array_equal(counts_of("binary", 2, sent), counts)
    assert counts_of("binary", 2, {k: v for k, v in list(sent.items())[1:]}) is None
    cm = validation_counts("multiclass", np.array([0, 1, 2, 2]),
                           np.eye(3)[[0, 2, 2, 1]])
    assert cm.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    both = combine("binary", 2, {"0": {**sent, "val_loss": 0.5, "val_examples": 40.0},
                                 "1": {**sent, "val_loss": 0.2, "val_examples": 10.0},
                                 "2": {"accuracy": 0.7}})
    assert both.sites == ("0", "1") and both.loss == pytest.approx((0.5 * 40 + 0.2 * 10) / 50)
    assert np.array_equal(both.counts, 2 * counts) and not both.noised
    assert combine("binary", 2, {"0": {"accuracy": 0.7}}) is None


def test_the_prior_point_is_the_post_hoc_logit_adjustment_of_the_training_counts():
    """Binary: P(1) >= pi_1 is where log p_1 - log pi_1 = log p_0 - log pi_0, pi Laplace-
    smoothed: 299 cases of label 1 and 99 of label 0 give (299 + 1) / (398 + 2) = 0.75."""
    from common.operating_point import LOGIT_ADJUSTMENT, prior_point

    point = prior_point(BINARY, np.array([99.0, 299.0]), positive=None, source="test")
    assert point.kind == THRESHOLD and point.threshold == pytest.approx(0.75)
    probs = np.array([[0.3, 0.7], [0.2, 0.8], [0.25, 0.75]])
    assert point.predict(probs).tolist() == [0, 1, 1]
    assert "class prior of 398 training cases" in point.rule
    logp = np.log(probs) - np.log([0.25, 0.75])
    assert point.predict(probs).tolist() == (logp[:, 1] >= logp[:, 0]).astype(int).tolist()
    task = TaskInfo("multiclass", 3, 2, 1, 28)
    multi = prior_point(task, np.array([9.0, 29.0, -5.0]), positive=None, source="test")
    assert multi.kind == LOGIT_ADJUSTMENT
    assert np.exp(multi.log_prior) == pytest.approx([10 / 41, 30 / 41, 1 / 41])  # clamped at 0
    # a logit-adjusted model: multi-class keeps the argmax; binary gets the threshold even so
    # (the counts exist only under DP, whose clipping undoes much of the adjustment)
    assert prior_point(task, np.array([9.0, 29.0, 5.0]), positive=None, source="t",
                       prior_adjusted=True).kind == "argmax"
    adjusted = prior_point(BINARY, np.array([99.0, 299.0]), positive=None, source="t",
                           prior_adjusted=True)
    assert adjusted.kind == THRESHOLD and adjusted.threshold == pytest.approx(0.75)


def test_a_noised_release_has_fewer_bins_and_adds_up_with_exact_sites_at_the_coarsest():
    """Noised histograms: NOISED_HIST_BINS bins, the coarsening of the exact ones (bin
    floor(10 p) is floor(50 p) // 5); a federation of exact and noised sites sums at 10 bins,
    and the threshold is then a multiple of 1/10."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    p1 = np.clip(labels * 0.4 + rng.random(60) * 0.6, 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    fine = validation_counts("binary", labels, probs)
    coarse = validation_counts("binary", labels, probs, noised=True)
    assert coarse.shape == (2, NOISED_HIST_BINS) and coarse.sum() == 60
    assert np.array_equal(coarsened(fine, NOISED_HIST_BINS), coarse)
    noised = counts_metrics("binary", coarse + 0.5)                 # as a noised reply reads
    assert np.array_equal(counts_of("binary", 2, noised), coarse + 0.5)
    both = combine("binary", 2, {"0": {**counts_metrics("binary", fine), "val_loss": 0.3,
                                       "val_examples": 60.0}, "1": noised})
    assert np.array_equal(both.counts, 2 * coarse + 0.5)
    point = choose_threshold(both.counts, positive=1)
    assert (point.threshold * NOISED_HIST_BINS) == pytest.approx(round(point.threshold * 10))
    with pytest.raises(ValueError, match="7 equal bins"):
        coarsened(fine, 7)


def test_the_noise_of_summed_counts_adds_in_variance_and_the_signal_is_in_its_sds():
    """Two noised sites (sigma 3 and 4) and an exact one: each summed count carries noise of sd
    sqrt(9 + 16) = 5; over 10 bins a class total carries 5 sqrt(10). The smaller class (label 1,
    total 31.6...) is then 2 sds of its noise; exact counts are all signal."""
    from common.operating_point import histogram_signal
    from common.validation_stats import VAL_NOISE_SD

    h = np.zeros((2, NOISED_HIST_BINS))
    h[0, 2], h[1, 7] = 100.0, 10 * np.sqrt(10)
    exact = {**counts_metrics("binary", np.zeros((2, HIST_BINS))), "val_loss": 0.3,
             "val_examples": 0.0}
    noised = {**counts_metrics("binary", h / 2), VAL_NOISE_SD: 3.0}
    other = {**counts_metrics("binary", h / 2), VAL_NOISE_SD: 4.0}
    both = combine("binary", 2, {"0": exact, "1": noised, "2": other})
    assert both.noised and both.loss is None                  # a mixed federation
    assert both.noise_sd == pytest.approx(5.0)
    assert histogram_signal(both.counts, both.noise_sd) == pytest.approx(2.0)
    assert histogram_signal(h, 0.0) == math.inf
    assert combine("binary", 2, {"1": counts_metrics("binary", h)}).noise_sd is None  # unsaid
    assert combine("binary", 2, {"0": exact}).noise_sd == 0.0
