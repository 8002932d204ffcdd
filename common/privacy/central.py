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
