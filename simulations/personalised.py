"""The simulation's personalised models (`--personalize`), scored on each site's test split.

* finetune: the simulator plays each site after the federation: the chosen global model
  (best_model.pt, else the final one) fine-tuned on the site's train split, its epoch chosen
  on the site's val split (`common.training.personalize.finetune`); only then is it scored on
  the site's test split.
* local-norm: the chosen round's shared weights with the normalisation layers the site kept
  from that round (the simulated sites write them under ``run_dir/personal/``,
  `client.personal_state`); the federated column is then the server's global model (shared
  weights with the initial normalisation layers), which the simulator scores itself, because
  the sites' own evaluations already use their personal layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from client.personal_state import PERSONAL_DIR, NormStore, norms_path, restore_norms
from common.config import RunConfig
from common.partitions.federation import Federation
from common.report.personalised import PersonalisedScores
from common.report.record import RunRecord
from common.training.local_norm import LOCAL_NORM, local_keys
from common.training.personalize import finetune
from common.training.prediction import evaluate
from simulations.baselines import operating_point_of, scored_at

SITE_SEED = 15_485_863          # site s fine-tunes with seed + (s + 1) x SITE_SEED
GLOBAL_SITE_NOTE = ("Federated per-site scores under local-norm: the server's global model "
                    "(the shared weights with the initial normalisation layers) scored by the "
                    "simulator on each site's test split; the sites' own evaluations, in "
                    "metrics.jsonl, use their personal layers (the personalised column).")

ModelFactory = Callable[[], torch.nn.Module]


def personal_dir(run_dir: Path) -> Path:
    """Where the simulated sites keep their personal layers (`common.wire.PERSONAL_DIR_KEY`)."""
    return run_dir / PERSONAL_DIR


def finetuned_scores(cfg: RunConfig, fed: Federation, chosen: ModelFactory,
                     echo: Callable[[str], None]) -> PersonalisedScores:
    """Each site fine-tunes the chosen global model on its train split, choosing the epoch on
    its val split; the kept model is scored on its test split."""
    sites, kept, at_point = {}, {}, {}
    for s in fed.sites:
        model = chosen()
        tuned = finetune(model, s.train, s.val, fed.task, cfg, epochs=cfg.finetune_epochs,
                         seed=cfg.seed + SITE_SEED * (s.site + 1), patience=cfg.patience)
        sites[str(s.site)] = evaluate(model, s.test, fed.task)
        at_point.update(_at_own_point(model, s, cfg, fed))
        kept[str(s.site)] = tuned.to_json()
        echo(f"[personalise finetune] site {s.site}: kept epoch {tuned.epoch} of "
             f"{tuned.epochs} by {tuned.criterion or 'nothing'}" +
             (f" ({tuned.note})" if tuned.note else ""))
    return PersonalisedScores("finetune", sites, kept, at_operating_point=at_point)


def local_norm_scores(cfg: RunConfig, fed: Federation, chosen: ModelFactory, run_dir: Path,
                      chosen_round: int) -> PersonalisedScores:
    """Each site's personal layers of ``chosen_round`` (or its last round before it) with the
    chosen round's shared weights, on its test split."""
    sites, missing, at_point = {}, [], {}
    for s in fed.sites:
        model = chosen()
        keys = local_keys(model, LOCAL_NORM)
        store = NormStore(norms_path(personal_dir(run_dir), run_dir.name, s.site))
        packed = store.latest(chosen_round, before=False)
        if packed is None:
            missing.append(str(s.site))
        restore_norms(model, keys, packed)
        sites[str(s.site)] = evaluate(model, s.test, fed.task)
        at_point.update(_at_own_point(model, s, cfg, fed))
    note = (f"site(s) {', '.join(missing)} never trained up to round {chosen_round}: their "
            f"row is the global model" if missing else "")
    return PersonalisedScores(LOCAL_NORM, sites, note=note, at_operating_point=at_point)


def _at_own_point(model: torch.nn.Module, site, cfg: RunConfig, fed: Federation
                  ) -> dict[str, dict[str, float]]:
    """{site: metrics} of the site's personal model on its test split at the operating point
    chosen on its own val split (as the local baseline's); {} for tasks without one."""
    point = operating_point_of(model, site.val, cfg, fed, f"site {site.site}'s validation split")
    scored = scored_at(point, model, site.test, fed)
    return {str(site.site): scored} if scored else {}


def with_personalised(record: RunRecord, cfg: RunConfig, fed: Federation, run_dir: Path,
                      chosen: ModelFactory, echo: Callable[[str], None]) -> RunRecord:
    """``record`` with its personalised column (and, under local-norm, the federated column
    scored by the simulator); unchanged without --personalize."""
    if cfg.personalize == "finetune":
        return dataclasses.replace(record, personalised=finetuned_scores(cfg, fed, chosen, echo))
    if cfg.personalize != LOCAL_NORM:
        return record
    sel = record.selection
    chosen_round = sel.chosen if sel is not None and sel.selected else record.rounds
    scores = local_norm_scores(cfg, fed, chosen, run_dir, chosen_round)
    glob = {str(s.site): evaluate(chosen(), s.test, fed.task) for s in fed.sites}
    return dataclasses.replace(record, personalised=scores, site_scores=glob,
                               site_scores_note=GLOBAL_SITE_NOTE)
