"""Admission: does this site take part in this run, and on which DP plan?

The server's run config is a request; the site's policy (client.policy) decides. In order:

1. the request itself: DP-SGD required (``require_dp``: dp=off and dp=client are refused),
   allowed models and strategies, the compute it asks (``max_local_passes``, ``max_width``);
2. the site's own plan: delta = min(policy delta or min(1e-5, 1/(10 n)), the server's if it
   gave one); the clipping norm the policy fixes, else the run's; the server's
   ``target_epsilon`` (refused above ``max_epsilon_per_run``) or its fixed noise multiplier
   (accepted only if the whole run's epsilon fits ``max_epsilon_per_run``); the run's other
   releases (the noised sample count, noised test metrics: `SitePolicy.planned_releases`) are
   part of the plan, so sigma is calibrated for training and releases together;
3. the budgets, against the site's ledger (every run ever trained on this dataset): a run new
   to the ledger is admitted only if its whole planned epsilon fits in what is left of
   ``lifetime_epsilon`` (budget - spent: runs add up); every round, the run's history plus
   this round must stay within the run's budget (min(target, max per run)) and the dataset's
   within ``lifetime_epsilon``.

A refusal by the policy raises `PolicyRefused` (rule ``require_dp``, ``allowed_models``,
``allowed_strategies``, ``max_local_passes``, ``max_width``, ``max_epsilon_per_run``,
``lifetime_epsilon``); a run that has spent its own budget raises `BudgetExhausted` (reply code
4030, as before).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from common.config import RunConfig
from common.privacy.accounting import epsilon_of_history
from common.privacy.ledger import BUDGET_RTOL, BudgetExhausted, PrivacyLedger
from common.privacy.planner import PrivacyPlan, given_delta, given_noise_multiplier, plan

from client.policy import PolicyRefused, SitePolicy, local_passes

SITE_DELTA_CAP = 1e-5     # the default delta is min(1e-5, 1/(10 n))

Entry = tuple[float, float, int]          # (sigma, q, steps) as the accountant composes them


class Ledger(Protocol):
    """What admission reads of the site's ledger (client.ledger.SiteLedger)."""

    def lifetime(self) -> PrivacyLedger: ...
    def run(self, run_key: str) -> PrivacyLedger: ...
    def released(self, run_key: str, kind: str) -> float | None: ...


@dataclass(frozen=True)
class Admitted:
    """A round the site agreed to train."""

    cfg: RunConfig                 # the run config as this site trains it (its clip, its delta)
    policy: SitePolicy
    plan: PrivacyPlan | None       # None: a run without DP-SGD (only if the policy allows it)
    budget: float = 0.0            # the run's budget at this site: min(target, max per run)
    run_epsilon: float = 0.0       # the run's epsilon after this round (and its count release)
    lifetime_epsilon: float = 0.0  # this dataset's epsilon after this round, every run included
    new_run: bool = False          # the first round of this run the ledger sees
    count_due: bool = False        # this round also releases the noised sample count


def check_request(cfg: RunConfig, policy: SitePolicy) -> None:
    """The rules that need no data: DP required, a loss the policy's releases allow, allowed
    models and strategies, the compute asked (`check_compute`)."""
    if policy.require_dp and cfg.dp != "sample":
        why = ("the run trains without DP" if cfg.dp == "off" else
               "client-level DP noises at the server, which this site does not trust")
        raise PolicyRefused("require_dp", f"this site trains only with sample-level DP-SGD "
                                          f"(dp=sample); the run asks dp={cfg.dp} ({why})")
    if (cfg.dp == "sample" and cfg.loss == "logit_adjusted"
            and policy.sample_count_release(dp=True) == "equal"):
        raise PolicyRefused("sample_count", "loss=logit_adjusted under DP takes its prior from "
                                            "the site's noised class counts, which this site "
                                            "does not release (sample_count = 'equal'); the "
                                            "run can use loss=ce")
    if policy.allowed_models and cfg.model not in policy.allowed_models:
        raise PolicyRefused("allowed_models", f"model {cfg.model!r} is not one this site allows "
                                              f"({', '.join(policy.allowed_models)})")
    if policy.allowed_strategies and cfg.strategy not in policy.allowed_strategies:
        raise PolicyRefused("allowed_strategies",
                            f"strategy {cfg.strategy!r} is not one this site allows "
                            f"({', '.join(policy.allowed_strategies)})")
    check_compute(cfg, policy)


def check_compute(cfg: RunConfig, policy: SitePolicy) -> None:
    """The compute one request may ask of this site: passes over its train split per train
    round (`client.policy.local_passes`; the fine-tuning epochs of ``personalize=finetune``
    count too, they are passes of their own request) and the model's width."""
    most = policy.max_local_passes
    if most is not None:
        asked = local_passes(cfg.local_epochs, cfg.aug_multiplicity)
        if asked > most:
            raise PolicyRefused("max_local_passes",
                                f"a round asks {asked} passes over the train split "
                                f"(local_epochs {cfg.local_epochs} x aug_multiplicity "
                                f"{cfg.aug_multiplicity}); this site allows at most {most}")
        if cfg.personalize == "finetune" and cfg.finetune_epochs > most:
            raise PolicyRefused("max_local_passes",
                                f"personalize=finetune asks {cfg.finetune_epochs} epochs of "
                                f"fine-tuning; this site allows at most {most} passes")
    if policy.max_width is not None and cfg.width > policy.max_width:
        raise PolicyRefused("max_width", f"the run asks width {cfg.width}; this site allows "
                                         f"at most {policy.max_width}")


def site_delta(policy: SitePolicy, cfg: RunConfig, n_train: int) -> float:
    """min(policy delta or min(1e-5, 1/(10 n)), the server's delta if it gave one)."""
    own = policy.delta if policy.delta is not None else min(SITE_DELTA_CAP, 1 / (10 * n_train))
    sent = given_delta(cfg.delta)
    return own if sent is None else min(own, sent)


def site_plan(cfg: RunConfig, policy: SitePolicy, n_train: int) -> PrivacyPlan:
    """The DP-SGD plan this site trains the run with (dp=sample), its releases included;
    PolicyRefused when the run asks more epsilon than ``max_epsilon_per_run``."""
    sigma = given_noise_multiplier(cfg.noise_multiplier)
    limit = policy.max_epsilon_per_run
    if sigma is None and cfg.target_epsilon > limit * (1 + BUDGET_RTOL):
        raise PolicyRefused("max_epsilon_per_run",
                            f"the run asks target_epsilon {cfg.target_epsilon:g}; this site "
                            f"allows at most {limit:g} per run")
    clip = policy.max_grad_norm if policy.max_grad_norm is not None else cfg.max_grad_norm
    planned = plan(n_train, cfg.batch_size, cfg.local_epochs, cfg.rounds,
                   target_epsilon=cfg.target_epsilon if sigma is None else None,
                   noise_multiplier=sigma, delta=site_delta(policy, cfg, n_train),
                   max_grad_norm=clip, accountant=cfg.accountant,
                   extra=policy.planned_releases())
    if sigma is not None and planned.epsilon > limit * (1 + BUDGET_RTOL):
        raise PolicyRefused("max_epsilon_per_run",
                            f"the run's fixed noise multiplier {sigma:g} spends epsilon "
                            f"{planned.epsilon:.3f} over its {cfg.rounds} rounds; this site "
                            f"allows at most {limit:g} per run")
    return planned


def admit(cfg: RunConfig, policy: SitePolicy, n_train: int, ledger: Ledger, run_key: str,
          server_round: int) -> Admitted:
    """Admit one train round of a run (see the module docstring), or raise PolicyRefused /
    BudgetExhausted. Nothing is charged here: the caller charges what it then releases."""
    check_request(cfg, policy)
    if cfg.dp != "sample":
        return Admitted(cfg=cfg, policy=policy, plan=None)
    planned = site_plan(cfg, policy, n_train)
    trains = cfg.replace(max_grad_norm=planned.max_grad_norm, delta=planned.delta)
    budget = min(cfg.target_epsilon, policy.max_epsilon_per_run)
    new_run = not ledger.run(run_key).history
    if new_run:
        _check_whole_run(planned, policy, ledger.lifetime(), budget)
    count_due = (policy.sample_count_release(dp=True) == "noised"
                 and ledger.released(run_key, "count") is None)
    entries = [(planned.noise_multiplier, planned.sample_rate, planned.steps_per_round)]
    if count_due:
        entries.append((policy.count_noise_multiplier, 1.0, 1))
    run_after, lifetime_after = check_spend(
        policy, ledger, run_key, entries, delta=planned.delta, accountant=cfg.accountant,
        budget=budget, target=cfg.target_epsilon, what=f"round {server_round}")
    return Admitted(cfg=trains, policy=policy, plan=planned, budget=budget,
                    run_epsilon=run_after, lifetime_epsilon=lifetime_after, new_run=new_run,
                    count_due=count_due)


def _after(history: tuple[Entry, ...], entries: list[Entry], delta: float,
           accountant: str) -> float:
    return epsilon_of_history([*history, *entries], delta, accountant)


def _check_whole_run(planned: PrivacyPlan, policy: SitePolicy, lifetime: PrivacyLedger,
                     budget: float) -> None:
    """A run new to the ledger: its whole planned epsilon (training and releases) must fit in
    what is left of the dataset's lifetime budget, budget - spent. The runs' epsilons add up
    here, as a privacy officer counts them (and a valid, if conservative, bound); composing the
    histories with the accountant (checked every round) would allow a little more. A fixed
    sigma's run stops at its budget, so it plans min(its whole-run epsilon, budget)."""
    spent = lifetime.epsilon(planned.delta)
    left = policy.lifetime_epsilon - spent
    plans = min(planned.epsilon, budget)
    if plans > left * (1 + BUDGET_RTOL):
        raise PolicyRefused("lifetime_epsilon",
                            f"this dataset has spent epsilon {spent:.3f} of its lifetime budget "
                            f"{policy.lifetime_epsilon:g} (delta {planned.delta:.2e}), "
                            f"{max(left, 0.0):.3f} left; the run plans to spend {plans:.3f}")


def check_spend(policy: SitePolicy, ledger: Ledger, run_key: str, entries: list[Entry], *,
                delta: float, accountant: str, budget: float, target: float,
                what: str) -> tuple[float, float]:
    """(run epsilon, lifetime epsilon) after releasing ``entries`` in run ``run_key``; raise
    BudgetExhausted when the run's own budget (``target`` within the policy) would be passed,
    PolicyRefused when ``max_epsilon_per_run`` or ``lifetime_epsilon`` would. ``what`` names
    the release in the message (e.g. "round 3"). Also for the releases of the evaluate task."""
    run, lifetime = ledger.run(run_key), ledger.lifetime()
    run_after = _after(run.history, entries, delta, accountant)
    if run_after > budget * (1 + BUDGET_RTOL):
        spent = run.epsilon(delta)
        if target <= policy.max_epsilon_per_run:
            raise BudgetExhausted(epsilon=run_after, budget=budget, delta=delta, spent=spent)
        raise PolicyRefused("max_epsilon_per_run",
                            f"the run has spent epsilon {spent:.3f} at this site; {what} "
                            f"would bring it to {run_after:.3f}, over the {budget:g} this site "
                            f"allows per run")
    lifetime_after = _after(lifetime.history, entries, delta, accountant)
    if lifetime_after > policy.lifetime_epsilon * (1 + BUDGET_RTOL):
        raise PolicyRefused("lifetime_epsilon",
                            f"this dataset has spent epsilon {lifetime.epsilon(delta):.3f} of "
                            f"its lifetime budget {policy.lifetime_epsilon:g} (delta "
                            f"{delta:.2e}); {what} would bring it to {lifetime_after:.3f}")
    return run_after, lifetime_after
