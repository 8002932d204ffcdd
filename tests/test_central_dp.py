"""Client-level (central) DP through Flower's wrapper and accountant: honest, plainly weak."""

import pytest

from common.config import ConfigError, RunConfig
from server.central_dp import calibrate_sigma, central_delta, central_epsilon, wrap_client_dp
from server.strategies import build_strategy
from simulations.simulate import simulate


def test_calibrated_sigma_spends_at_most_the_target():
    sigma = calibrate_sigma(8.0, rounds=5, sampled=4, num_sites=4, delta=0.025)
    eps = central_epsilon(sigma, 5, 4, 4, 0.025)
    assert 0.97 * 8.0 <= eps <= 8.0
    assert central_epsilon(sigma * 0.98, 5, 4, 4, 0.025) > eps     # less noise, more epsilon


def test_more_rounds_cost_more_epsilon():
    assert central_epsilon(2.0, 10, 4, 4, 0.025) > central_epsilon(2.0, 5, 4, 4, 0.025)


def test_wrapper_only_for_uniform_fedavg_and_says_when_weak():
    cfg = RunConfig(dp="client", sites=4, strategy="fedmedian")
    with pytest.raises(ConfigError, match="fedavg or fedprox"):
        wrap_client_dp(build_strategy(cfg, 4), cfg, 4, 4)
    cfg = RunConfig(dp="client", sites=4, noise_multiplier=0.3)
    wrapper, plan = wrap_client_dp(build_strategy(cfg, 4), cfg, 4, 4)
    assert plan.delta == central_delta(cfg, 4) == pytest.approx(1e-5)   # min(1e-5, 1/(10 x 4))
    assert plan.planned_epsilon > 10 and "weak guarantee" in plan.warning
    assert wrapper.strategy.weighted_by_key == "dp-weight"


def test_client_level_dp_federation_reports_the_whole_run_epsilon(tmp_path):
    cfg = RunConfig(num_samples=200, sites=2, rounds=2, model="cnn", width=8, baselines="",
                    dp="client", target_epsilon=20.0, output_dir=str(tmp_path))
    outcome = simulate(cfg, echo=lambda line: None, run_name="central")
    privacy = outcome.summary["privacy"]
    assert privacy["mode"] == "client" and list(privacy["per_round"]) == ["1", "2"]
    expected = central_epsilon(privacy["noise_multiplier"], 2, 2, 2, privacy["delta"])
    assert privacy["epsilon"] == pytest.approx(expected, rel=1e-6)
    assert privacy["epsilon"] <= 20.0
    assert privacy["per_round"]["1"] < privacy["per_round"]["2"]
    assert "Client-level DP" in (outcome.run_dir / "report.md").read_text()
