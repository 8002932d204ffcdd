"""classification_metrics / mean_metrics against small cases worked out by hand."""

import math

import numpy as np
import pytest

from common.metrics import METRIC_NAMES, classification_metrics, mean_metrics


def _binary_probs(p1: list[float]) -> np.ndarray:
    p1 = np.asarray(p1)
    return np.stack([1.0 - p1, p1], axis=1)


def test_binary_hand_computed():
    y = np.array([0, 0, 1, 1, 1])
    probs = _binary_probs([0.1, 0.6, 0.4, 0.8, 0.9])
    # predictions (argmax) = [0, 1, 0, 1, 1]
    # TP = 2 (idx 3, 4), FN = 1 (idx 2), TN = 1 (idx 0), FP = 1 (idx 1)
    # AUC: positives .4 .8 .9 vs negatives .1 .6 -> 3 x 2 = 6 pairs; only (.4 < .6) is wrong -> 5/6
    got = classification_metrics("binary", y, probs)
    expected = {
        "accuracy": 3 / 5,                       # (TP + TN) / 5
        "sensitivity": 2 / 3,                    # TP / (TP + FN)
        "specificity": 1 / 2,                    # TN / (TN + FP)
        "precision": 2 / 3,                      # TP / (TP + FP)
        "f1": 2 / 3,                             # 2 * (2/3 * 2/3) / (2/3 + 2/3)
        "balanced_accuracy": (2 / 3 + 1 / 2) / 2,
        "auc": 5 / 6,
    }
    assert set(got) == set(METRIC_NAMES)
    assert all(type(v) is float for v in got.values())
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_multiclass_macro_hand_computed():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([
        [0.7, 0.2, 0.1],   # y0 -> pred 0
        [0.3, 0.6, 0.1],   # y0 -> pred 1
        [0.2, 0.7, 0.1],   # y1 -> pred 1
        [0.1, 0.8, 0.1],   # y1 -> pred 1
        [0.1, 0.1, 0.8],   # y2 -> pred 2
        [0.5, 0.2, 0.3],   # y2 -> pred 0
    ])
    # class 0: TP1 FN1 FP1 TN3 -> recall 1/2, precision 1/2, f1 1/2, specificity 3/4
    # class 1: TP2 FN0 FP1 TN3 -> recall 1,   precision 2/3, f1 2*(2/3)/(5/3) = 4/5, spec 3/4
    # class 2: TP1 FN1 FP0 TN4 -> recall 1/2, precision 1,   f1 2*(1/2)/(3/2) = 2/3, spec 1
    # OvR AUC: class 0 pos {.7,.3} vs neg {.2,.1,.1,.5}: 8 pairs, only .3 < .5 wrong -> 7/8
    #          class 1 pos {.7,.8} vs neg {.2,.6,.1,.2} -> 1; class 2 pos {.8,.3} vs neg {.1 x4} -> 1
    expected = {
        "accuracy": 4 / 6,
        "sensitivity": (1 / 2 + 1 + 1 / 2) / 3,
        "balanced_accuracy": (1 / 2 + 1 + 1 / 2) / 3,
        "specificity": (3 / 4 + 3 / 4 + 1) / 3,
        "precision": (1 / 2 + 2 / 3 + 1) / 3,
        "f1": (1 / 2 + 4 / 5 + 2 / 3) / 3,
        "auc": (7 / 8 + 1 + 1) / 3,
    }
    for kind in ("multiclass", "ordinal"):
        got = classification_metrics(kind, y, probs)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value), (kind, key)


def test_multilabel_hand_computed():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.3, 0.4], [0.2, 0.1]])
    # threshold 0.5 -> pred [[1,0],[1,1],[0,0],[0,0]]
    # label 0: y [1,0,1,0] pred [1,1,0,0]: TP1 FP1 FN1 TN1 -> acc 1/2, recall 1/2, spec 1/2,
    #          precision 1/2, f1 1/2, balanced 1/2; AUC pos {.9,.3} neg {.6,.2}: 3 of 4 pairs -> 3/4
    # label 1: y [0,1,1,0] pred [0,1,0,0]: TP1 FN1 FP0 TN2 -> acc 3/4, recall 1/2, spec 1,
    #          precision 1, f1 2/3, balanced 3/4; AUC pos {.7,.4} neg {.2,.1} -> 1
    expected = {
        "accuracy": (1 / 2 + 3 / 4) / 2,          # mean per-label accuracy
        "sensitivity": (1 / 2 + 1 / 2) / 2,
        "specificity": (1 / 2 + 1) / 2,
        "precision": (1 / 2 + 1) / 2,
        "f1": (1 / 2 + 2 / 3) / 2,
        "balanced_accuracy": (1 / 2 + 3 / 4) / 2,
        "auc": (3 / 4 + 1) / 2,
    }
    got = classification_metrics("multilabel", y, probs)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_auc_nan_when_only_one_class_present():
    probs = _binary_probs([0.1, 0.7, 0.4])
    got = classification_metrics("binary", np.array([0, 0, 0]), probs)
    assert math.isnan(got["auc"])
    assert got["accuracy"] == pytest.approx(2 / 3)      # other metrics still computed
    assert got["specificity"] == pytest.approx(2 / 3)   # TN 2, FP 1
    multi = classification_metrics("multiclass", np.array([1, 1]), np.array([[.2, .5, .3]] * 2))
    assert math.isnan(multi["auc"])
    assert multi["accuracy"] == 1.0
    flat = classification_metrics("multilabel", np.zeros((3, 2)), np.full((3, 2), 0.3))
    assert math.isnan(flat["auc"])


def test_auc_skips_undefined_label_or_class():
    # label 1 is all-zero (AUC undefined) -> auc is label 0's AUC alone: pos {.9} vs neg {.2,.6} -> 1
    y = np.array([[1, 0], [0, 0], [0, 0]])
    probs = np.array([[0.9, 0.3], [0.2, 0.8], [0.6, 0.1]])
    assert classification_metrics("multilabel", y, probs)["auc"] == pytest.approx(1.0)
    # class 2 absent from y_true (skipped). class 0 column [.6,.3,.2]: pos {.6} vs neg {.3,.2} -> 1;
    # class 1 column [.3,.3,.5]: pos {.3,.5} vs neg {.3}: tie counts 1/2, .5 > .3 counts 1 -> 3/4
    yc = np.array([0, 1, 1])
    pc = np.array([[0.6, 0.3, 0.1], [0.3, 0.3, 0.4], [0.2, 0.5, 0.3]])
    assert classification_metrics("multiclass", yc, pc)["auc"] == pytest.approx((1 + 3 / 4) / 2)


def test_bad_inputs_raise_clear_errors():
    probs = _binary_probs([0.2, 0.8])
    with pytest.raises(ValueError, match="kind='regression'"):
        classification_metrics("regression", np.array([0, 1]), probs)
    with pytest.raises(ValueError, match="3 rows but probs has 2"):
        classification_metrics("binary", np.array([0, 1, 1]), probs)
    with pytest.raises(ValueError, match="class 2 outside 0..1"):
        classification_metrics("binary", np.array([0, 2]), probs)
    with pytest.raises(ValueError, match="2 columns"):
        classification_metrics("binary", np.array([0, 1]), np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="non-empty"):
        classification_metrics("binary", np.array([], dtype=np.int64), np.zeros((0, 2)))


def test_mean_metrics_weights_and_ignores_nan():
    sites = [{"accuracy": 0.5, "auc": float("nan")},
             {"accuracy": 1.0, "auc": 0.8},
             {"accuracy": 0.0, "auc": 0.2}]
    got = mean_metrics(sites, [1.0, 3.0, 0.0])
    assert got["accuracy"] == pytest.approx((1 * 0.5 + 3 * 1.0 + 0 * 0.0) / 4)
    assert got["auc"] == pytest.approx(0.8)            # NaN site dropped, zero-weight site ignored
    equal = mean_metrics(sites, [1.0, 1.0, 1.0])
    assert equal["auc"] == pytest.approx((0.8 + 0.2) / 2)
    assert math.isnan(mean_metrics([{"auc": float("nan")}], [5.0])["auc"])


def test_mean_metrics_rejects_bad_weights():
    with pytest.raises(ValueError, match="2 metric dicts but 1 weights"):
        mean_metrics([{"a": 1.0}, {"a": 2.0}], [1.0])
    with pytest.raises(ValueError, match=">= 0"):
        mean_metrics([{"a": 1.0}], [-1.0])
    with pytest.raises(ValueError, match="no sites"):
        mean_metrics([], [])
