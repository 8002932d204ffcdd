"""The plan client-level DP follows over a run, typed: what `server.central_dp.wrap_client_dp`
decided before the first round. The server keeps it in its `RoundLog`; the run record's
`common.report.privacy.ClientPrivacy` carries it into summary.json and report.md."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClientDPPlan:
    """Server-side clipping and Gaussian noise for the whole run, and the epsilon it plans."""

    noise_multiplier: float   # sigma: the noise is sigma * clipping_norm / sampled sites
    delta: float
    clipping_norm: float      # C: each site's update is clipped to this norm
    rounds: int
    sites: int
    planned_epsilon: float    # epsilon of all `rounds` releases at this sigma (Flower's accountant)
    target_epsilon: float     # the run's budget the noise was calibrated to (unless sigma was given)
    warning: str              # the plain-language caveat printed beside the epsilon
    delta_given: bool = False  # the run set delta; else the default `client_delta_default`


MAX_CLIENT_DELTA = 1e-5


def client_delta_default(num_sites: int) -> float:
    """Client-level delta when the run sets none: min(1e-5, 1/(10 x sites)). Below one over the
    population as the definition needs, and never above 1e-5: with 4 sites 1/(10 x sites) is
    0.025, a 2.5% chance that the guarantee fails outright."""
    if num_sites < 1:
        raise ValueError(f"client-level DP: num_sites={num_sites}; expected at least 1")
    return min(MAX_CLIENT_DELTA, 1.0 / (10 * num_sites))
