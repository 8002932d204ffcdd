"""Membership-inference audit: score summaries, per-sample losses, attacks on real toy models."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from common.config import RunConfig
from common.datasets import synthetic
from common.datasets.base import Split, TaskInfo
from common.mia import (
    MIAResult,
    audit,
    balanced,
    calibrated_attack,
    loss_threshold_attack,
    per_sample_loss,
    scores_to_result,
)
from common.training.local import train_local
from common.training.prediction import evaluate

torch.set_num_threads(1)

OVERFIT_MEMBERS = np.arange(0, 48)       # the overfit model's whole training set
DISJOINT_TRAIN = np.arange(48, 96)       # training set of a model that never sees the members
UNSEEN_MEMBERS = np.arange(100, 400)     # "members" no model trained on
NONMEMBERS = np.arange(400, 1000)
OVERFIT_CFG = RunConfig(optimizer="adam", lr=3e-3, batch_size=16, weight_decay=0.0)


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 4))


@pytest.fixture(scope="module")
def data():
    return synthetic.load(num_samples=1000, size=28, seed=0)


@pytest.fixture(scope="module")
def overfit(data):
    """(initial model, model trained 150 epochs on 48 samples without regularisation)."""
    model = _mlp(0)
    initial = copy.deepcopy(model)
    train_local(model, data.train.subset(OVERFIT_MEMBERS), data.task, OVERFIT_CFG, epochs=150,
                seed=0)
    return initial, model


@pytest.fixture(scope="module")
def disjoint(data):
    """(initial model, model trained like `overfit` but on other samples than the audited ones)."""
    model = _mlp(3)
    initial = copy.deepcopy(model)
    train_local(model, data.train.subset(DISJOINT_TRAIN), data.task, OVERFIT_CFG, epochs=150,
                seed=0)
    return initial, model


def _split(n: int, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.random((n, 1, 4, 4), dtype=np.float32), np.arange(n, dtype=np.int64) % 3)


# --- score summaries on hand-made scores -------------------------------------------------------

def test_perfect_separation_gives_auc_one_and_full_low_fpr_tpr():
    result = scores_to_result("loss-threshold", np.array([5.0, 4.0, 3.0]), np.array([1.0, 0.0]))
    assert result == MIAResult("loss-threshold", 1.0, 1.0, 1.0, 3, 2)


def test_reversed_scores_give_auc_zero():
    result = scores_to_result("calibrated", np.array([0.0, 1.0]), np.array([2.0, 3.0]))
    assert result.auc == 0.0 and result.tpr_at_1pct_fpr == 0.0 and result.advantage == 0.0


def test_identical_distributions_give_chance_auc():
    rng = np.random.default_rng(0)
    result = scores_to_result("loss-threshold", rng.normal(size=2000), rng.normal(size=2000))
    assert abs(result.auc - 0.5) < 0.03
    assert result.tpr_at_1pct_fpr < 0.03
    assert result.advantage < 0.06


def test_small_roc_matches_hand_computation():
    # Descending: 5 (member) alone, then a tie 2 (two members, one non-member), then 0 (non-member).
    # ROC points: (0, 0), (0, 1/3), (1/2, 1), (1, 1). The tie makes a diagonal segment, so
    # TPR at FPR 0.01 = 1/3 + (0.01 / 0.5) * (1 - 1/3). AUC counts the two tied pairs as 1/2:
    # (2 + 0.5 + 0.5 + 1 + 1) / 6. Advantage: max(1/3 - 0, 1 - 1/2, 1 - 1) = 1/2.
    result = scores_to_result("loss-threshold", np.array([5.0, 2.0, 2.0]), np.array([2.0, 0.0]))
    assert result.auc == pytest.approx(5 / 6)
    assert result.tpr_at_1pct_fpr == pytest.approx(1 / 3 + 0.02 * (2 / 3))
    assert result.advantage == pytest.approx(0.5)
    assert (result.n_members, result.n_nonmembers) == (3, 2)


def test_low_fpr_tpr_takes_the_top_of_a_vertical_segment_at_exactly_one_percent():
    # 100 non-members: one scores above half of the members, giving ROC points (0, 0.5),
    # (0.01, 0.5), (0.01, 1): at FPR = 1% exactly the attacker reaches TPR 1.
    members = np.array([10.0] * 5 + [1.0] * 5)
    nonmembers = np.array([5.0] + [0.0] * 99)
    assert scores_to_result("loss-threshold", members, nonmembers).tpr_at_1pct_fpr == 1.0
    # One non-member above all members: the first FPR step reaches 1% at TPR 0, then the members
    # climb the vertical segment at FPR 1% to TPR 1.
    nonmembers = np.array([20.0] + [0.0] * 99)
    assert scores_to_result("loss-threshold", members, nonmembers).tpr_at_1pct_fpr == 1.0
    # Two non-members above all members: FPR 1% lies halfway along the flat (0, 0)-(0.02, 0) step.
    nonmembers = np.array([20.0, 20.0] + [0.0] * 98)
    assert scores_to_result("loss-threshold", members, nonmembers).tpr_at_1pct_fpr == 0.0


def test_scores_to_result_rejects_bad_input():
    with pytest.raises(ValueError, match="1 members"):
        scores_to_result("loss-threshold", np.array([1.0]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="0 non-members"):
        scores_to_result("loss-threshold", np.array([1.0, 2.0]), np.array([]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        scores_to_result("loss-threshold", np.array([1.0, np.nan]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="'lira' unknown"):
        scores_to_result("lira", np.array([1.0, 2.0]), np.array([0.0, 1.0]))


# --- per-sample loss ----------------------------------------------------------------------------

def test_per_sample_loss_of_a_zero_model_is_log_k_and_k_log_2():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    nn.init.zeros_(model[1].weight), nn.init.zeros_(model[1].bias)
    multiclass = TaskInfo(kind="multiclass", num_classes=3, spatial_dims=2, channels=1, size=4)
    split = _split(10)
    assert np.allclose(per_sample_loss(model, split, multiclass), math.log(3))
    multilabel = TaskInfo(kind="multilabel", num_classes=3, spatial_dims=2, channels=1, size=4)
    labels = (np.arange(30).reshape(10, 3) % 2).astype(np.float32)
    loss = per_sample_loss(model, Split(split.images, labels), multilabel)
    assert loss.shape == (10,) and loss.dtype == np.float64
    assert np.allclose(loss, 3 * math.log(2))        # BCE summed over the 3 labels


def test_per_sample_loss_averages_to_evaluate_loss_and_keeps_the_mode(data, overfit):
    _, model = overfit
    split = data.train.subset(NONMEMBERS[:100])
    model.train()
    loss = per_sample_loss(model, split, data.task, batch_size=7)
    assert model.training                            # mode restored
    assert loss.shape == (100,) and (loss >= 0).all()
    assert loss.mean() == pytest.approx(evaluate(model, split, data.task)["loss"], rel=1e-6)


# --- attacks on trained models ------------------------------------------------------------------

def test_overfit_model_leaks_membership(data, overfit):
    initial, model = overfit
    members = data.train.subset(OVERFIT_MEMBERS)
    nonmembers = data.train.subset(NONMEMBERS[:300])
    plain = loss_threshold_attack(model, members, nonmembers, data.task)
    calibrated = calibrated_attack(model, initial, members, nonmembers, data.task)
    assert plain.attack == "loss-threshold" and calibrated.attack == "calibrated"
    assert (plain.n_members, plain.n_nonmembers) == (48, 300)
    assert plain.auc > 0.7 and calibrated.auc > 0.7
    assert plain.advantage > 0.4


def test_model_that_never_saw_the_data_shows_no_leakage(data, disjoint):
    members = data.train.subset(UNSEEN_MEMBERS)
    nonmembers = data.train.subset(NONMEMBERS[:300])
    initial, trained = disjoint
    for model in (initial, trained):                 # random init, and trained on other samples
        plain = loss_threshold_attack(model, members, nonmembers, data.task)
        calibrated = calibrated_attack(model, _mlp(7), members, nonmembers, data.task)
        assert abs(plain.auc - 0.5) < 0.1 and abs(calibrated.auc - 0.5) < 0.1
    assert abs(calibrated_attack(trained, initial, members, nonmembers, data.task).auc - 0.5) < 0.1


def test_attacks_reject_degenerate_sides(data, overfit):
    _, model = overfit
    one, many = data.train.subset(np.arange(1)), data.train.subset(np.arange(10))
    with pytest.raises(ValueError, match="loss_threshold_attack: 1 members"):
        loss_threshold_attack(model, one, many, data.task)
    with pytest.raises(ValueError, match="calibrated_attack: 1 non-members"):
        calibrated_attack(model, model, many, one, data.task)


# --- balancing and the audit --------------------------------------------------------------------

def test_balanced_is_deterministic_equal_sized_and_subsamples_only_the_larger_side():
    members, nonmembers = _split(10, seed=1), _split(25, seed=2)
    m1, n1 = balanced(members, nonmembers, seed=3)
    m2, n2 = balanced(members, nonmembers, seed=3)
    assert len(m1) == len(n1) == 10
    assert m1 is members                             # the smaller side is kept whole
    assert np.array_equal(n1.images, n2.images) and np.array_equal(n1.labels, n2.labels)
    rows = {row.tobytes() for row in nonmembers.images}
    assert len({row.tobytes() for row in n1.images} & rows) == 10   # distinct original samples
    _, other = balanced(members, nonmembers, seed=4)
    assert not np.array_equal(other.images, n1.images)
    m3, n3 = balanced(nonmembers, members, seed=3)  # larger side first works the same way
    assert len(m3) == len(n3) == 10 and n3 is members


def test_balanced_rejects_degenerate_sides():
    with pytest.raises(ValueError, match="balanced: 0 members"):
        balanced(_split(0), _split(5), seed=0)
    with pytest.raises(ValueError, match="balanced: 1 non-members"):
        balanced(_split(5), _split(1), seed=0)


def test_audit_reports_sites_and_pooled_as_json(data, overfit):
    initial, model = overfit
    pairs = [(data.train.subset(OVERFIT_MEMBERS), data.train.subset(NONMEMBERS[:200])),
             (data.train.subset(UNSEEN_MEMBERS[:100]), data.train.subset(NONMEMBERS[200:260]))]
    report = audit(model, pairs, data.task, reference_model=initial, seed=5)
    assert json.loads(json.dumps(report))["pooled"] == report["pooled"]
    assert set(report["sites"]) == {0, 1}
    site0, site1 = report["sites"][0], report["sites"][1]
    assert set(site0) == set(report["pooled"]) == {"loss-threshold", "calibrated"}
    assert site0["loss-threshold"]["n_members"] == site0["loss-threshold"]["n_nonmembers"] == 48
    assert site1["calibrated"]["n_members"] == site1["calibrated"]["n_nonmembers"] == 60
    pooled = report["pooled"]["loss-threshold"]
    assert pooled["n_members"] == pooled["n_nonmembers"] == 108
    assert site0["loss-threshold"]["auc"] > 0.7 > site1["loss-threshold"]["auc"]
    assert site1["loss-threshold"]["auc"] < pooled["auc"] < site0["loss-threshold"]["auc"]
    assert all(isinstance(v, (str, int, float)) for v in pooled.values())
    assert audit(model, pairs, data.task, reference_model=initial, seed=5) == report


def test_audit_pooled_of_one_site_equals_the_site_and_needs_a_reference_for_calibration(data,
                                                                                        overfit):
    _, model = overfit
    pairs = [(data.train.subset(OVERFIT_MEMBERS), data.train.subset(NONMEMBERS[:100]))]
    report = audit(model, pairs, data.task)
    assert set(report["pooled"]) == {"loss-threshold"}
    assert report["pooled"] == report["sites"][0]


def test_audit_rejects_bad_pairs(data, overfit):
    _, model = overfit
    with pytest.raises(ValueError, match="pairs is empty"):
        audit(model, [], data.task)
    with pytest.raises(ValueError, match=r"pairs\[0\] has 1 entries"):
        audit(model, [(data.train.subset(np.arange(5)),)], data.task)


def test_audit_skips_a_site_with_too_few_members_and_pools_the_others(data, overfit):
    """A site with 1 member (a small site, or one whose bad files were all skipped) and one with
    1 non-member get a reason instead of failing the run; the pooled attack covers the rest."""
    initial, model = overfit
    good = (data.train.subset(OVERFIT_MEMBERS), data.train.subset(NONMEMBERS[:100]))
    pairs = [good, (data.train.subset(np.arange(1)), data.train.subset(NONMEMBERS[100:110])),
             (data.train.subset(UNSEEN_MEMBERS[:10]), data.train.subset(NONMEMBERS[110:111]))]
    report = audit(model, pairs, data.task, reference_model=initial, seed=5, resamples=50)
    assert report["sites"][1] == {"skipped": "1 member(s) and 10 non-member(s); the membership-"
                                             "inference attack needs at least 2 of each"}
    assert report["sites"][2] == {"skipped": "10 member(s) and 1 non-member(s); the membership-"
                                             "inference attack needs at least 2 of each"}
    assert "skipped" not in report
    alone = audit(model, [good], data.task, reference_model=initial, seed=5, resamples=50)
    assert report["sites"][0] == alone["sites"][0]
    assert report["pooled"] == alone["pooled"]          # only site 0 was usable
    assert report["pooled"]["loss-threshold"]["n_members"] == 48
    assert json.loads(json.dumps(report))["sites"]["1"] == report["sites"][1]


def test_audit_with_no_usable_site_pools_nothing_and_says_why(data, overfit):
    _, model = overfit
    pairs = [(data.train.subset(np.arange(1)), data.train.subset(np.arange(1, 6))),
             (data.train.subset(np.arange(6, 11)), data.train.subset(np.arange(0)))]
    report = audit(model, pairs, data.task)
    assert report["pooled"] == {}
    assert report["skipped"].startswith("no site could be audited: each needs at least 2 members "
                                        "and 2 non-members")
    assert report["sites"][1]["skipped"].startswith("5 member(s) and 0 non-member(s);")


def test_audit_skips_sites_whose_scores_are_not_finite(data, overfit):
    """A diverged model (NaN weights) is reported per site, not raised; a site whose losses alone
    are NaN is skipped while the others are audited."""
    initial, model = overfit
    pairs = [(data.train.subset(OVERFIT_MEMBERS[:20]), data.train.subset(NONMEMBERS[:20])),
             (data.train.subset(UNSEEN_MEMBERS[:30]), data.train.subset(NONMEMBERS[20:50]))]
    diverged = copy.deepcopy(model)
    with torch.no_grad():
        diverged[1].weight[0, 0] = float("nan")
    report = audit(diverged, pairs, data.task, reference_model=initial)
    assert report["sites"] == {
        0: {"skipped": "40 membership scores are NaN or infinite (the model's losses are not "
                       "finite)"},
        1: {"skipped": "60 membership scores are NaN or infinite (the model's losses are not "
                       "finite)"}}
    assert report["pooled"] == {} and report["skipped"].startswith("no site could be audited")

    bad = pairs[1][0]            # balanced keeps a side whole (the same object) at equal sizes

    def loss(net, split, task):
        losses = per_sample_loss(net, split, task)
        return np.where(np.arange(len(split)) < 3, np.inf, losses) if split is bad else losses

    report = audit(model, pairs, data.task, loss=loss, resamples=0)
    assert report["sites"][1] == {"skipped": "3 membership scores are NaN or infinite (the "
                                             "model's losses are not finite)"}
    assert report["pooled"] == report["sites"][0]
    assert report["pooled"]["loss-threshold"]["n_members"] == 20
