"""`fedclinic tradeoff`: how much utility each privacy budget costs, federated vs local vs pooled.

Sweeps the DP-SGD budget epsilon (``inf`` = no DP) over several seeds. Every (epsilon, seed) cell
is one full `simulate()` run (federation plus the local and pooled baselines, trained under the
same DP budget), kept in ``<output-dir>/<sweep-name>/eps<E>-seed<S>/``. The sweep folder gets
``tradeoff.csv`` (one row per cell, model and scope), ``tradeoff.md`` (mean ± std over seeds) and
``tradeoff.png`` (utility against epsilon). A stopped sweep restarted with the same arguments
reuses the cells that finished; ``sweep.json`` holds the arguments so a restart with other ones is
refused instead of mixing two experiments in one table.

Utility is ROC-AUC (accuracy where AUC is undefined) for classification and Dice for
``--task segmentation``, whose table also shows HD95.

One concept per module: `spec` (the sweep and its cells), `sweep_record` (sweep.json), `cells`
(one cell's run), `rows` (a summary as rows), `stats` (over seeds), `outputs` (csv and markdown
table), `plot`, `progress` (elapsed and ETA) and `sweep` (`run_tradeoff`).
"""
