"""A site's DP-SGD schedule for a whole run (Opacus' sampling) and the epsilon it spends.

RunConfig spells "not given" as 0 for ``noise_multiplier`` (calibrate sigma for
``target_epsilon``) and ``delta`` (the default delta); `given_noise_multiplier` and
`given_delta` are the one place that translates it, for sample- and client-level DP alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common.config import ConfigError, RunConfig
from common.privacy.accounting import epsilon_of_history
from common.privacy.calibration import MAX_NOISE_MULTIPLIER, calibrate_noise_multiplier
from common.privacy.checks import check_accountant, check_delta, check_entry, int_arg, positive

# Fixed mechanisms a site plans besides DP-SGD, one ``(sigma, q, steps)`` ledger entry each
# (e.g. `common.privacy.mechanisms.gaussian_entry` of a count or metric release).
Extra = tuple[tuple[float, float, int], ...]


def given_noise_multiplier(value: float) -> float | None:
    """A ``noise_multiplier`` setting as given: None for 0, which means "calibrate sigma for
    target_epsilon" (any other value, even an invalid one, is passed on to be checked)."""
    return None if value == 0 else value


def given_delta(value: float) -> float | None:
    """A ``delta`` setting as given: None for 0, which means "the default delta" (1/(10 n) of a
    site, or of the population of sites under client-level DP)."""
    return None if value == 0 else value


def default_delta(n_train: int) -> float:
    """``1 / (10 n)``: delta must be well below ``1/n``.

    A mechanism that publishes one random record in full is (0, 1/n)-DP, so any delta >= 1/n
    allows a total leak of some patient; a tenth of that keeps the failure probability small
    while, for the few hundred to few thousand records of a site, costing little epsilon.
    """
    return 1.0 / (10 * int_arg("n_train", n_train))


def poisson_sampling(n_train: int, batch_size: int) -> tuple[float, int]:
    """``(sample_rate, steps_per_epoch)`` exactly as Opacus' ``make_private`` accounts them.

    See `common.privacy`: ``L = ceil(n / B)`` batches of the plain loader, ``int(1 / (1/L))``
    Poisson batches per epoch, each sample drawn with probability ``1 / L``, accounted with
    ``1 / steps_per_epoch`` (equal to ``1 / L``, or a conservative ``1 / (L - 1)``).
    """
    n, b = int_arg("n_train", n_train), int_arg("batch_size", batch_size)
    batches = -(-n // b)          # ceil(n / B): len(DataLoader(batch_size=B, drop_last=False))
    steps = int(1 / (1 / batches))
    return 1 / steps, steps


def _check_site_delta(delta: float, n_train: int) -> float:
    delta = check_delta(delta)
    if delta >= 1 / n_train:
        raise ConfigError(f"delta={delta!r} >= 1/n_train = {1 / n_train:.3g}: a delta that large "
                          f"allows leaking a whole patient record; use delta < 1/n_train "
                          f"(default: 1/(10 n) = {default_delta(n_train):.3g})")
    return delta


@dataclass(frozen=True)
class PrivacyPlan:
    """DP-SGD schedule of one site for a whole run, and the epsilon it spends."""

    sample_rate: float              # q accounted per step (Opacus: 1 / len(DPDataLoader))
    steps_per_round: int            # local_epochs x Poisson batches per epoch
    rounds: int
    total_steps: int                # rounds x steps_per_round: what sigma is calibrated for
    noise_multiplier: float         # sigma, given or calibrated
    target_epsilon: float | None    # None when sigma was given
    epsilon: float                  # whole-run epsilon at delta, with `accountant`
    delta: float
    max_grad_norm: float            # clipping norm C
    accountant: str
    batch_size: int
    n_train: int
    noise_std_per_coordinate: float  # sigma * C / expected_batch_size: noise of the mean gradient
    local_epochs: int
    expected_batch_size: int        # Opacus' int(n * q), the divisor of the summed gradient
    extra: Extra = ()               # planned fixed releases, composed into `epsilon`

    def history(self, rounds_done: int) -> list[tuple[float, float, int]]:
        """DP-SGD of ``rounds_done`` rounds, then every planned release (none after 0 rounds)."""
        steps = int_arg("rounds_done", rounds_done, lo=0) * self.steps_per_round
        if not steps:
            return []
        return [(self.noise_multiplier, self.sample_rate, steps), *self.extra]

    def epsilon_after(self, rounds_done: int) -> float:
        """Epsilon after ``rounds_done`` planned rounds, counting every planned release
        (``extra``) from the first round on: what a site's ledger reports when it has released
        them all, and an upper bound on it before (a release is made once, in some round).
        Without extras it is exactly the ledger's epsilon; after the last round it is
        `epsilon`."""
        return epsilon_of_history(self.history(rounds_done), self.delta, self.accountant)


def plan(n_train: int, batch_size: int, local_epochs: int, rounds: int, *,
         target_epsilon: float | None = None, noise_multiplier: float | None = None,
         delta: float | None = None, max_grad_norm: float = 1.0,
         accountant: str = "rdp", extra: Sequence[Sequence[float]] = ()) -> PrivacyPlan:
    """Plan DP-SGD for one site: give exactly one of ``target_epsilon`` (sigma is calibrated
    for the whole run) or ``noise_multiplier`` (its whole-run epsilon is computed).
    ``delta=None`` means :func:`default_delta`.

    ``extra``: fixed mechanisms the site will also run, ``(sigma, q, steps)`` each (a Gaussian
    count or metric release is ``(sigma, 1.0, 1)``). They are composed with the DP-SGD history
    both when sigma is calibrated (training gets what the releases leave of the target) and in
    the reported ``epsilon``."""
    n = int_arg("n_train", n_train)
    # A site with fewer training samples than one batch trains on all of them at every step
    # (q = 1, one step per epoch: no amplification by sampling, accounted as such), as a plain
    # DataLoader would; the plan records the batch it uses.
    b = min(int_arg("batch_size", batch_size), n)
    epochs, rounds = int_arg("local_epochs", local_epochs), int_arg("rounds", rounds)
    clip = positive("max_grad_norm", max_grad_norm)
    check_accountant(accountant)
    if (target_epsilon is None) == (noise_multiplier is None):
        raise ConfigError(f"target_epsilon={target_epsilon!r}, noise_multiplier="
                          f"{noise_multiplier!r}: give exactly one of them (a budget to "
                          f"calibrate sigma for, or a fixed sigma)")
    delta = default_delta(n) if delta is None else _check_site_delta(delta, n)
    fixed: Extra = tuple(check_entry(*entry) for entry in extra)
    q, per_epoch = poisson_sampling(n, b)
    per_round = per_epoch * epochs
    total = per_round * rounds
    if noise_multiplier is None:
        target = positive("target_epsilon", target_epsilon)
        sigma = calibrate_noise_multiplier(target, delta, q, total, accountant, fixed)
    else:
        target = None
        sigma = positive("noise_multiplier", noise_multiplier, hi=MAX_NOISE_MULTIPLIER)
    eps = epsilon_of_history([(sigma, q, total), *fixed], delta, accountant)
    expected = int(n * q)
    return PrivacyPlan(sample_rate=q, steps_per_round=per_round, rounds=rounds, total_steps=total,
                       noise_multiplier=sigma, target_epsilon=target, epsilon=eps, delta=delta,
                       max_grad_norm=clip, accountant=accountant, batch_size=b, n_train=n,
                       noise_std_per_coordinate=sigma * clip / expected, local_epochs=epochs,
                       expected_batch_size=expected, extra=fixed)


def plan_from_config(cfg: RunConfig, n_train: int,
                     extra: Sequence[Sequence[float]] = ()) -> PrivacyPlan:
    """The DP-SGD plan of a site with ``n_train`` training samples under ``cfg`` (dp='sample'):
    sigma calibrated for ``cfg.target_epsilon`` unless given, delta `default_delta` unless given;
    ``extra`` as in `plan`.
    """
    if cfg.dp != "sample":
        raise ConfigError(f"dp={cfg.dp!r}: a DP-SGD plan is for per-sample privacy, dp='sample'")
    sigma = given_noise_multiplier(cfg.noise_multiplier)
    return plan(n_train, cfg.batch_size, cfg.local_epochs, cfg.rounds,
                target_epsilon=cfg.target_epsilon if sigma is None else None,
                noise_multiplier=sigma, delta=given_delta(cfg.delta),
                max_grad_norm=cfg.max_grad_norm, accountant=cfg.accountant, extra=extra)
