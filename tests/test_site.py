"""Which data a ClientApp trains on, from its node config."""

import numpy as np
import pytest

from client.site import load_site
from common.config import ConfigError, RunConfig


def test_simulated_site_gets_its_own_partition():
    cfg = RunConfig(num_samples=200, sites=2)
    a = load_site(cfg, {"partition-id": 0, "num-partitions": 2})
    b = load_site(cfg, {"partition-id": 1, "num-partitions": 2})
    assert (a.site, b.site) == (0, 1)
    assert len(a.train) + len(b.train) < 200 and len(a.test) > 0
    assert not np.array_equal(a.train.images[:5], b.train.images[:5])


def test_engine_and_config_must_agree_on_the_number_of_sites():
    with pytest.raises(ConfigError, match="runs 10 virtual sites but the run config says sites=2"):
        load_site(RunConfig(num_samples=200, sites=2), {"partition-id": 0, "num-partitions": 10})


def test_deployed_site_reads_its_own_file(tmp_path):
    path = tmp_path / "site.npz"
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1)
    np.savez(path, **arrays)
    site = load_site(RunConfig(), {"data-path": str(path), "site-id": 3})
    assert site.site == 3 and len(site.train) == 12 and len(site.test) == 6
    assert site.task.kind == "binary"


def test_node_config_without_data_is_a_clear_error():
    with pytest.raises(ConfigError, match="neither 'partition-id'.*nor 'data-path'"):
        load_site(RunConfig(), {"foo": 1})


def test_a_site_may_set_its_own_privacy_budget():
    from client.site import site_privacy

    cfg = RunConfig(dp="sample", target_epsilon=8.0)
    assert site_privacy(cfg, {"partition-id": 0}) is cfg
    mine = site_privacy(cfg, {"target-epsilon": "2.5", "max-grad-norm": 0.5})
    assert (mine.target_epsilon, mine.max_grad_norm, mine.rounds) == (2.5, 0.5, cfg.rounds)
    with pytest.raises(ConfigError, match="target_epsilon=0.0: out of range"):
        site_privacy(cfg, {"target-epsilon": 0.0})
