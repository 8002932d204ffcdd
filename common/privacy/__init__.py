"""Differential-privacy planning and accounting for DP-SGD at each site (Opacus accountants).

One concept per module, in the shape of Opacus' ``opacus/accountants/``: `checks` (argument
validation shared by all), `accounting` (epsilon of a history, with a memory guard for PRV),
`calibration` (the one noise calibrator, for sample- and client-level DP), `planner` (a site's
whole-run DP-SGD schedule) and `ledger` (what a site has spent, across rounds and restarts).

Honesty rules this package enforces:

* The noise multiplier is calibrated for the WHOLE planned run (rounds x local steps), with the
  same accountant (``rdp`` or ``prv``) that later reports epsilon, so the epsilon a run reports
  at its end is the one it planned, never a per-round figure.
* The sampling schedule is Opacus' own. ``PrivacyEngine.make_private`` on a
  ``DataLoader(dataset, batch_size=B)`` (``drop_last=False``) has ``L = ceil(n / B)`` batches; it
  swaps in a ``DPDataLoader`` that includes every sample with probability ``1 / L`` and yields
  ``int(1 / (1 / L))`` batches per epoch (``UniformWithReplacementSampler``: ``steps =
  int(1 / sample_rate)``; in floating point that is ``L - 1`` for some ``L``, e.g. 93). The
  accountant is then stepped with ``sample_rate = 1 / len(dp_loader)``.
  `planner.poisson_sampling` returns exactly that pair, so a ledger fed with ``PrivacyPlan.
  sample_rate`` and ``steps_per_round`` holds the same history as Opacus' own accountant.
  (``q = B / n`` and ``round(n / B)`` steps would differ from it whenever B does not divide n.)
  A trainer that samples by itself instead must include each sample with probability at most
  ``sample_rate`` and take exactly ``steps_per_round`` steps per round.
* The per-round history merges equal ``(sigma, q)`` entries like Opacus' accountants, so after
  ``r`` rounds the ledger's history is ``[(sigma, q, r * steps_per_round)]``: exactly the
  history the plan was calibrated on, hence the same epsilon (also across stop-and-resume, via
  `ledger.PrivacyLedger.state_dict`).
"""
