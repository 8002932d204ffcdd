"""Scale on one machine: sampling sites for evaluation (`--fraction-evaluate`) and the helpers
of `bench/scale.py` (the process tree's memory, the seconds of each round)."""

import json
import os
import subprocess
import sys

from bench import scale
from common.config import RunConfig
from common.report.record import RunRecord
from server.strategies import build_strategy
from simulations.simulate import sites_withheld


def test_fraction_evaluate_reaches_the_strategy_and_defaults_to_every_site():
    assert build_strategy(RunConfig(sites=200), 200).fraction_evaluate == 1.0
    sampled = build_strategy(RunConfig(sites=200, fraction_train=0.1, fraction_evaluate=0.1), 200)
    assert (sampled.fraction_train, sampled.fraction_evaluate) == (0.1, 0.1)


def _record(sites: int, evaluated: int) -> RunRecord:
    test = {"loss": 0.5, "accuracy": 0.8}
    last = {"round": 1, "global": test,
            "sites": {str(s): {"train": None, "test": test} for s in range(evaluated)}}
    return RunRecord(config=RunConfig(sites=sites), history=[last], wall_seconds=1.0)


def test_the_simulator_scores_every_site_when_not_all_evaluated_the_last_round():
    assert not sites_withheld(_record(sites=4, evaluated=4))
    assert sites_withheld(_record(sites=4, evaluated=1))


def test_the_process_tree_and_its_memory_include_children():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tree = scale.process_tree(os.getpid())
        assert tree[0] == os.getpid() and child.pid in tree
        sampler = scale.TreeSampler(os.getpid())
        sampler.sample()
        own_rss, own_pss = scale.memory_of(os.getpid())
        assert sampler.peak_rss > own_rss > 0 and own_pss > 0
        assert sampler.peak_processes >= 2 and "driver" in sampler.at_peak
    finally:
        child.kill()
        child.wait()
    assert scale.memory_of(child.pid) == (0, 0)


def test_round_seconds_start_after_the_initial_evaluation(tmp_path):
    lines = [{"round": 0, "seconds": 0.5, "sites": {}},
             {"round": 1, "seconds": 10.5, "sites": {"0": {"train": {"loss": 1}, "test": None},
                                                     "3": {"train": None, "test": {"loss": 1}}}},
             {"round": 2, "seconds": 12.0, "sites": {"1": {"train": {"loss": 1},
                                                           "test": {"loss": 1}}}}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert scale.round_seconds(path) == ([10.0, 1.5], [1, 1], [1, 1])


def test_a_federation_that_evaluates_a_sample_of_its_sites_reports_every_site(tmp_path):
    """Half the sites train and half evaluate each round; the report still scores all four
    (the simulator scores the final model on the sites that did not evaluate it)."""
    import torch

    from simulations.simulate import simulate

    torch.set_num_threads(1)
    cfg = RunConfig(model="cnn", width=8, num_samples=200, sites=4, rounds=2, local_epochs=1,
                    fraction_train=0.5, fraction_evaluate=0.5, baselines="",
                    output_dir=str(tmp_path))
    outcome = simulate(cfg, echo=lambda line: None, run_name="sampled")
    for line in outcome.history[1:]:
        assert sum(1 for s in line["sites"].values() if s.get("train")) == 2
        assert sum(1 for s in line["sites"].values() if s.get("test")) == 2
    sites = outcome.summary["federated"]["sites"]
    assert sorted(sites) == ["0", "1", "2", "3"]
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in sites.values())
