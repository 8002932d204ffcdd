"""Client-level (central) DP: Flower's server-side fixed-clipping wrapper and Flower's accountant.

Each round the server clips every site's update to norm C (`max_grad_norm`), averages them with
equal weights and adds Gaussian noise sigma * C / sites. This protects whole hospitals (a site's
entire contribution), not single patients, and its epsilon is accounted over rounds with no
sampling amplification. With a handful of sites the noise needed for a small epsilon swamps the
signal, so the epsilon this gives is usually large: we print it and say so.
"""

from __future__ import annotations

from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping, FedAvg, FedProx, Strategy,
)
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from common.config import ConfigError, RunConfig
from common.privacy.calibration import calibrate_sigma as calibrate_noise
from common.privacy.central import ClientDPPlan, client_delta_default
from common.privacy.ledger import BUDGET_RTOL
from common.privacy.planner import given_delta, given_noise_multiplier

WEAK_EPSILON = 10.0


def central_delta(cfg: RunConfig, num_sites: int) -> float:
    """cfg.delta, or `client_delta_default`: min(1e-5, 1/(10 x sites))."""
    delta = given_delta(cfg.delta)
    return delta if delta is not None else client_delta_default(num_sites)


def _accountant(delta: float, num_sites: int, max_epsilon: float | None) -> RdpAccountant:
    return RdpAccountant(PrivacyConfig(
        target_delta=delta, population_size=num_sites,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION, max_epsilon=max_epsilon))


def central_epsilon(sigma: float, rounds: int, sampled: int, num_sites: int, delta: float) -> float:
    """Epsilon of `rounds` releases with Flower's accountant."""
    acc = _accountant(delta, num_sites, None)
    acc.compose(GaussianPrivacyEvent(sigma, sampled, num_sites), count=rounds)
    return acc.get_epsilon(delta)


def calibrate_sigma(target: float, rounds: int, sampled: int, num_sites: int,
                    delta: float) -> float:
    """Smallest sigma whose whole-run epsilon is <= target (within 0.5 % of it), by the same
    calibrator as DP-SGD's (`common.privacy.calibration.calibrate_sigma`)."""
    return calibrate_noise(
        lambda sigma: central_epsilon(sigma, rounds, sampled, num_sites, delta), target,
        spent_over=f"over {rounds} rounds of client-level DP at delta={delta:.3g}",
        advice="Raise target_epsilon or use fewer rounds")


def _flower_strategy(strategy: Strategy) -> type:
    """The Flower strategy class a (possibly fedclinic-subclassed) strategy is: the first class
    of its MRO defined by Flower (FedMedian subclasses FedAvg, so isinstance would not do)."""
    return next((c for c in type(strategy).__mro__ if c.__module__.startswith("flwr.")), object)


def wrap_client_dp(strategy: Strategy, cfg: RunConfig, num_sites: int, sampled: int
                   ) -> tuple[DifferentialPrivacyServerSideFixedClipping, ClientDPPlan]:
    """Wrap a FedAvg/FedProx strategy; return the wrapper and the privacy plan it follows."""
    if _flower_strategy(strategy) not in (FedAvg, FedProx):
        raise ConfigError(f"dp='client' needs strategy fedavg or fedprox (uniform averaging of "
                          f"clipped updates); got {cfg.strategy!r}")
    delta = central_delta(cfg, num_sites)
    sigma = given_noise_multiplier(cfg.noise_multiplier)
    if sigma is None:
        sigma = calibrate_sigma(cfg.target_epsilon, cfg.rounds, sampled, num_sites, delta)
    epsilon = central_epsilon(sigma, cfg.rounds, sampled, num_sites, delta)
    wrapper = DifferentialPrivacyServerSideFixedClipping(
        strategy, noise_multiplier=sigma, clipping_norm=cfg.max_grad_norm,
        num_sampled_clients=sampled,
        accountant=_accountant(delta, num_sites, cfg.target_epsilon * (1 + BUDGET_RTOL)))
    plan = ClientDPPlan(noise_multiplier=sigma, delta=delta, clipping_norm=cfg.max_grad_norm,
                        rounds=cfg.rounds, sites=num_sites, planned_epsilon=epsilon,
                        target_epsilon=cfg.target_epsilon, warning=weakness(epsilon, num_sites),
                        delta_given=given_delta(cfg.delta) is not None)
    return wrapper, plan


def weakness(epsilon: float, num_sites: int) -> str:
    """The plain-language caveat printed beside a client-level epsilon."""
    if epsilon > WEAK_EPSILON:
        return (f"client-level epsilon {epsilon:.1f} with only {num_sites} sites is a weak "
                "guarantee: it bounds what the model reveals about a whole hospital, and with "
                "so few sites only heavy noise could make it small")
    return (f"client-level epsilon {epsilon:.2f} protects each hospital's whole contribution; it "
            "says nothing extra about single patients beyond that")
