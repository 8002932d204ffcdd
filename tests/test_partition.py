"""Partitioning sites: invariants of each scheme, the federation's splits, shift and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.config import ConfigError, RunConfig
from common.partition_spec import parse_partition
from common.datasets.base import DataError, Dataset, Split, TaskInfo
from common.partitions import loader as part
from common.partitions.federation import build_federation
from common.partitions.label_skew import partition_indices
from common.partitions.loader import site_data
from common.partitions.quantity import quantity_sizes
from common.partitions.site_split import split_site
from simulations.partition_report import heterogeneity, label_histograms, write_partition_report

N, CLASSES = 600, 4
LABELS = np.repeat(np.arange(CLASSES), N // CLASSES)
SCHEMES = ("iid", "dirichlet:0.5", "pathological:2", "quantity", "quantity:lognormal")


def _parts(spec: str, seed: int = 0, sites: int = 4, labels: np.ndarray = LABELS):
    return partition_indices(labels, sites, parse_partition(spec), seed)


def _dataset(n: int = 200, n_test: int = 40, n_val: int = 0, masks: bool = False) -> Dataset:
    """Images whose constant value encodes the sample's row (train rows, then val rows)."""
    rng = np.random.default_rng(0)

    def split(start: int, count: int, labels: np.ndarray) -> Split:
        ids = np.arange(start, start + count, dtype=np.float32)
        images = np.broadcast_to(((ids + 1) / 1000)[:, None, None, None], (count, 1, 8, 8)).copy()
        mask = (rng.random((count, 8, 8)) > 0.5).astype(np.uint8) if masks else None
        return Split(images, labels.astype(np.int64), mask)

    task = TaskInfo("multiclass", CLASSES, 2, 1, 8, ("a", "b", "c|d", "e"))
    train = split(0, n, np.arange(n) % CLASSES)
    val = split(n, n_val, np.arange(n_val) % CLASSES) if n_val else None
    test = Split(rng.random((n_test, 1, 8, 8), dtype=np.float32), np.arange(n_test) % CLASSES)
    return Dataset("toy", task, train, test, val)


def _row_ids(split: Split) -> np.ndarray:
    return np.rint(split.images[:, 0, 0, 0] * 1000).astype(np.int64) - 1


def _cfg(partition: str = "iid", **kw) -> RunConfig:
    return RunConfig(partition=partition, **{"sites": 4, "val_fraction": 0.1,
                                            "test_fraction": 0.2, **kw})


# --------------------------------------------------------------------------- partition_indices

@pytest.mark.parametrize("spec", SCHEMES)
def test_each_scheme_is_disjoint_sorted_and_covers_all_samples(spec):
    parts = _parts(spec, seed=3)
    assert len(parts) == 4
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)
    joined = np.concatenate(parts)
    assert len(joined) == N and np.array_equal(np.sort(joined), np.arange(N))


@pytest.mark.parametrize("spec", SCHEMES)
def test_same_seed_reproduces_and_other_seed_differs(spec):
    first, again, other = _parts(spec, 7), _parts(spec, 7), _parts(spec, 8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert any(len(a) != len(b) or not np.array_equal(a, b) for a, b in zip(first, other))


def test_iid_sites_have_equal_sizes_and_balanced_labels():
    parts = _parts("iid", seed=1)
    assert {len(p) for p in parts} == {N // 4}
    hist = np.stack([np.bincount(LABELS[p], minlength=CLASSES) for p in parts])
    assert heterogeneity(hist) < 0.15


def test_smaller_alpha_gives_more_heterogeneous_sites():
    def mean_het(alpha: float) -> float:
        hets = []
        for seed in range(4):
            parts = _parts(f"dirichlet:{alpha}", seed)
            hets.append(heterogeneity(np.stack([np.bincount(LABELS[p], minlength=CLASSES)
                                                for p in parts])))
        return float(np.mean(hets))

    skewed, near_iid = mean_het(0.1), mean_het(100)
    assert skewed > 0.25 and near_iid < 0.1 and skewed > near_iid + 0.2


@pytest.mark.parametrize("seed", range(3))
def test_pathological_gives_each_site_exactly_k_classes(seed):
    for k in (1, 2):
        for p in _parts(f"pathological:{k}", seed):
            assert len(np.unique(LABELS[p])) == k


def test_pathological_places_every_class_when_sites_times_k_allow_it():
    labels = np.repeat(np.arange(9), 30)
    covered = np.concatenate(_parts("pathological:2", seed=2, sites=5, labels=labels))
    assert np.array_equal(np.sort(covered), np.arange(len(labels)))


def test_pathological_leaves_out_only_classes_no_site_can_hold():
    labels = np.repeat(np.arange(9), 30)   # 4 sites x 2 classes < 9 classes: one class unused
    parts = _parts("pathological:2", seed=0, sites=4, labels=labels)
    used = np.unique(labels[np.concatenate(parts)])
    assert len(used) == 8
    assert len(np.concatenate(parts)) == 8 * 30   # every sample of a used class is placed


@pytest.mark.parametrize("law", ["powerlaw", "lognormal"])
@pytest.mark.parametrize("seed", range(3))
def test_quantity_skew_gives_unequal_sizes_summing_to_n_with_iid_labels(law, seed):
    parts = _parts(f"quantity:{law}", seed)
    sizes = np.array([len(p) for p in parts])
    assert sizes.sum() == N and sizes.max() / sizes.min() >= 2
    assert sizes.min() >= N // (10 * 4)
    big = parts[int(np.argmax(sizes))]
    assert np.all(np.bincount(LABELS[big], minlength=CLASSES) > 0.15 * len(big))


def test_quantity_sizes_respect_floor_and_total():
    sizes = quantity_sizes(1000, 10, "powerlaw", np.random.default_rng(0))
    assert sum(sizes) == 1000 and min(sizes) >= 10
    assert max(sizes) > 10 * min(sizes)
    with pytest.raises(ConfigError, match="quantity law 'zipf'"):
        quantity_sizes(100, 2, "zipf", np.random.default_rng(0))


def test_more_sites_than_samples_is_a_clear_config_error():
    with pytest.raises(ConfigError, match=r"sites=8 needs at least 24 samples .* has only 5"):
        partition_indices(np.arange(5) % 2, 8, parse_partition("iid"), 0)
    with pytest.raises(ConfigError, match="sites=0"):
        partition_indices(LABELS, 0, parse_partition("iid"), 0)


def test_pathological_k_above_class_count_is_a_config_error():
    with pytest.raises(ConfigError, match=r"5 classes per site but the labels hold only 4"):
        _parts("pathological:5")


def test_site_left_with_too_few_samples_is_a_config_error():
    labels = np.array([0] * 5 + [1] * 5 + [2] * 5 + [3] * 1)   # class 3 alone at one site
    with pytest.raises(ConfigError,
                       match=r"leaves site \d with 1 sample \(need >= 3\);.*more classes per site"):
        partition_indices(labels, 4, parse_partition("pathological:1"), 0)


def test_malformed_labels_are_a_data_error():
    with pytest.raises(DataError, match=r"shape \(10, 2\)"):
        partition_indices(np.zeros((10, 2), dtype=np.int64), 2, parse_partition("iid"), 0)


# --------------------------------------------------------------------------- split_site

def test_split_site_is_stratified_and_matches_fractions():
    labels = np.repeat(np.arange(4), 50)
    train, val, test = split_site(labels, 0.1, 0.2, np.random.default_rng(0))
    assert (len(train), len(val), len(test)) == (140, 20, 40)
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(200))
    assert all(abs(c - 10) <= 1 for c in np.bincount(labels[test], minlength=4))
    assert all(abs(c - 5) <= 1 for c in np.bincount(labels[val], minlength=4))


def test_split_site_keeps_train_and_test_non_empty_on_tiny_sites():
    train, val, test = split_site(np.array([0, 1, 1]), 0.5, 0.5, np.random.default_rng(0))
    assert len(train) >= 1 and len(test) >= 1 and len(train) + len(val) + len(test) == 3
    with pytest.raises(ConfigError, match=r"site 5 has only 1 sample\(s\)"):
        split_site(np.array([0]), 0.1, 0.2, np.random.default_rng(0), site=5)


# --------------------------------------------------------------------------- build_federation

def test_federation_splits_are_disjoint_cover_the_site_and_match_fractions():
    data = _dataset(n=200, n_val=40, masks=True)
    fed = build_federation(data, _cfg("dirichlet:1.0", seed=2))
    pool_labels = np.concatenate([data.train.labels, data.val.labels])
    seen = []
    for s in fed.sites:
        assert s.profile is None
        ids = [_row_ids(x) for x in (s.train, s.val, s.test)]
        both = np.concatenate(ids)
        assert len(np.unique(both)) == len(both)
        assert np.array_equal(np.sort(both), s.indices)
        n = len(s.indices)
        assert abs(len(s.test) - 0.2 * n) <= 1 and abs(len(s.val) - 0.1 * n) <= 1
        for split, rows in zip((s.train, s.val, s.test), ids):
            assert np.array_equal(split.labels, pool_labels[rows])
            assert split.masks is not None and split.masks.shape == (len(rows), 8, 8)
        seen.append(s.indices)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(240))   # pool = train + val
    assert fed.global_test is data.test
    assert fed.dataset_name == "toy" and fed.seed == 2 and fed.spec.alpha == 1.0


def test_shift_changes_every_site_but_the_reference_and_is_deterministic():
    data = _dataset(n=120)
    original_test = data.test.images.copy()
    cfg = _cfg("iid+shift", seed=5)
    fed, again = build_federation(data, cfg), build_federation(data, cfg)
    plain = build_federation(data, _cfg("iid", seed=5))
    assert fed.sites[0].profile.name == "reference" and fed.sites[0].profile.is_identity
    for s, s2, p in zip(fed.sites, again.sites, plain.sites):
        assert np.array_equal(s.indices, p.indices)
        for split, split2, ref in ((s.train, s2.train, p.train), (s.test, s2.test, p.test)):
            assert np.array_equal(split.images, split2.images)           # deterministic
            assert np.array_equal(split.labels, ref.labels)
            assert split.images.dtype == np.float32
            assert split.images.min() >= 0.0 and split.images.max() <= 1.0
            changed = not np.allclose(split.images, ref.images, atol=1e-4)
            assert changed == (s.site != 0)
    assert fed.global_test is data.test and np.array_equal(data.test.images, original_test)


def test_federation_errors_propagate_as_config_errors():
    with pytest.raises(ConfigError, match="sites=50 needs at least 150 samples"):
        build_federation(_dataset(n=30), _cfg(sites=50))


# --------------------------------------------------------------------------- histograms and report

def test_label_histograms_count_every_site_sample():
    fed = build_federation(_dataset(n=200), _cfg("pathological:1", seed=0))
    hist = label_histograms(fed)
    assert hist.shape == (4, CLASSES) and hist.dtype == np.int64
    for row, s in zip(hist, fed.sites):
        assert row.sum() == len(s.train) + len(s.val) + len(s.test)
        assert (row > 0).sum() == 1
    assert heterogeneity(hist) == pytest.approx(0.75)


def test_heterogeneity_bounds_and_weighting():
    assert heterogeneity(np.array([[10, 10], [5, 5]])) == pytest.approx(0.0)
    assert heterogeneity(np.array([[10, 0], [0, 10]])) == pytest.approx(0.5)
    # a big IID-like site and a small skewed one: the skewed site counts by its size
    value = heterogeneity(np.array([[45, 45], [10, 0]]))
    assert value == pytest.approx(0.9 * 0.05 + 0.1 * 0.45)
    assert heterogeneity(np.zeros((3, 2))) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        heterogeneity(np.array([1, 2]))


def test_write_partition_report_writes_table_chart_and_json(tmp_path):
    fed = build_federation(_dataset(n=200), _cfg("dirichlet:0.5+shift", seed=1))
    report = write_partition_report(fed, tmp_path / "out")
    out = tmp_path / "out"
    assert json.loads((out / "partition.json").read_text()) == report
    assert report["partition"] == "dirichlet:0.5+shift" and report["seed"] == 1
    assert report["spec"]["alpha"] == 0.5 and report["spec"]["shift"] is True
    assert report["heterogeneity"] == pytest.approx(heterogeneity(label_histograms(fed)))
    assert report["global_test"] == 40 and report["classes"] == ["a", "b", "c|d", "e"]
    for entry, s in zip(report["sites"], fed.sites):
        assert entry["indices"] == s.indices.tolist()
        assert (entry["train"], entry["val"], entry["test"]) == (len(s.train), len(s.val),
                                                                 len(s.test))
        assert entry["profile"]["name"] == s.profile.name
    md = (out / "partition.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 4                             # header + one row per site
    assert rows[0].split("|")[1:6] == [" site ", " profile ", " train ", " val ", " test "]
    assert "c/d" in rows[0]                       # a '|' in a class name cannot break the table
    assert f"{report['heterogeneity']:.3f}" in md and "dirichlet:0.5+shift" in md
    assert rows[1].split("|")[2].strip() == "reference"
    assert (out / "partition.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- site_data

def test_site_data_loads_once_per_config_and_checks_the_site(monkeypatch):
    import common.datasets as datasets_pkg

    calls = []

    def fake_load(cfg):
        calls.append(cfg)
        return _dataset(n=120)

    monkeypatch.setattr(datasets_pkg, "load_dataset", fake_load, raising=False)
    part.load_federation.cache_clear()
    try:
        cfg = _cfg("iid", seed=9)
        first, second = site_data(cfg, 1), site_data(cfg, 3)
        assert len(calls) == 1 and site_data(cfg, 1) is first
        assert first.site == 1 and second.site == 3
        assert not np.intersect1d(first.indices, second.indices).size
        with pytest.raises(ConfigError, match=r"site=4: out of range; .*sites=4"):
            site_data(cfg, 4)
    finally:
        part.load_federation.cache_clear()
