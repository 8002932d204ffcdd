"""`--personalize finetune` at a deployed site: when the last round's evaluate request arrives,
the site fine-tunes the global model it received on its own train split, keeps the epoch with
the lowest loss on its own val split (`common.training.personalize.finetune`; the test split
only scores the result), and keeps the personal model and both models' test scores in its state
folder (``<state>/personal/``, files 0600, `client.personal_state`). Nothing of it leaves the
site: the evaluate reply is the one the policy allows for the global model.

A simulated site does nothing here: the simulator fine-tunes the run's chosen model for each
site itself (`simulations.personalised`). A run stopped early (``--patience``) never sends the
last round, so no site fine-tunes; the global model the site kept (`client.site_audit`) can be
fine-tuned again with a later run's ``--init-from``.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Mapping
from pathlib import Path

import torch

from client.personal_state import personal_dir
from client.policy import is_simulated
from client.site import LocalSite
from common.config import RunConfig
from common.private_files import write_private
from common.rundir import clean_json
from common.training.personalize import finetune
from common.training.prediction import evaluate
from common.wire import RUN_KEY

FINETUNE_SEED = 7_919_003


def personal_model_path(folder: Path, run_key: str, site: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in run_key) or "run"
    return folder / f"{safe}-site{site}-finetuned.pt"


def finetune_at_site(node_config: Mapping[str, object], config: Mapping[str, object],
                     cfg: RunConfig, site: LocalSite, model: torch.nn.Module,
                     server_round: int) -> Path | None:
    """At a deployed site, on the last round's evaluate under personalize=finetune: fine-tune
    a copy of ``model`` and keep it (module docstring). Returns the personal model's path, or
    None when there is nothing to do."""
    if cfg.personalize != "finetune" or is_simulated(node_config) or server_round != cfg.rounds:
        return None
    folder = personal_dir(node_config, config)
    if folder is None:
        return None
    personal = copy.deepcopy(model)
    tuned = finetune(personal, site.train, site.val, site.task, cfg, epochs=cfg.finetune_epochs,
                     seed=cfg.seed + FINETUNE_SEED + site.site, patience=cfg.patience)
    run_key = str(config.get(RUN_KEY, ""))
    path = personal_model_path(folder, run_key, site.site)
    buffer = io.BytesIO()
    torch.save({"state_dict": personal.state_dict(), "config": cfg.to_dict(),
                "round": server_round, "finetune": tuned.to_json()}, buffer)
    write_private(path, buffer.getvalue())
    scores = {"run": run_key, "round": server_round, "finetune": tuned.to_json(),
              "test": {"federated": evaluate(model, site.test, site.task),
                       "personalised": evaluate(personal, site.test, site.task)}}
    write_private(path.with_suffix(".json"),
                  (json.dumps(clean_json(scores), indent=2) + "\n").encode())
    return path
