"""A site's personal parameters: what `--personalize` keeps at the site and never sends.

* local-norm: the normalisation layers' tensors (`common.training.local_norm`) after each round
  the site trained, per run; the site trains and evaluates round r with the shared weights the
  server sent plus its own latest norms (train: from before round r; evaluate: after it).
* finetune (deployment): the site's fine-tuned model and its local scores
  (`client.personalize_task`).

Where: a deployed site in its state folder, ``<state>/personal/`` (files 0600, folder 0700,
atomic and durable writes, `common.private_files`); a simulated site in the folder the
simulation names (`common.wire.PERSONAL_DIR_KEY`, read only when simulated: the simulator plays
every site and scores their personal models), else in its Flower ``Context.state``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context

from client.policy import is_simulated
from client.site_audit import site_state_dir
from common.packing import pack_state, unpack_state
from common.private_files import write_private
from common.wire import PERSONAL_DIR_KEY, RUN_KEY

PERSONAL_DIR = "personal"
STATE_KEY = "fedclinic-personal-norms"     # Context.state record when there is no folder


def personal_dir(node_config: Mapping[str, object], config: Mapping[str, object]
                 ) -> Path | None:
    """The folder of this site's personal files, or None (simulation without a folder)."""
    if is_simulated(node_config):
        named = config.get(PERSONAL_DIR_KEY)
        return Path(str(named)) if named else None
    state = site_state_dir(node_config)
    return None if state is None else state / PERSONAL_DIR


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "run"


def norms_path(folder: Path, run_key: str, site: int) -> Path:
    return folder / f"{_safe(run_key)}-site{site}-norms.pt"


@dataclass
class NormStore:
    """One site's normalisation tensors of one run, by the round they were trained in."""

    path: Path | None
    context: Context | None = None

    def _rounds(self) -> dict[int, torch.Tensor]:
        if self.path is not None:
            if not self.path.is_file():
                return {}
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            return {int(r): t for r, t in saved["rounds"].items()}
        record = self.context.state.get(STATE_KEY) if self.context is not None else None
        if record is None:
            return {}
        return {int(r): torch.as_tensor(a.numpy()) for r, a in record.items()}

    def latest(self, server_round: int, before: bool) -> torch.Tensor | None:
        """The packed norms of the last round trained up to ``server_round`` (``before``:
        strictly before it), or None: the site has not trained yet in this run."""
        rounds = [r for r in self._rounds() if (r < server_round if before
                                                else r <= server_round)]
        return self._rounds()[max(rounds)] if rounds else None

    def save(self, server_round: int, packed: torch.Tensor) -> None:
        rounds = {**self._rounds(), server_round: packed.detach().clone()}
        if self.path is not None:
            buffer = io.BytesIO()
            torch.save({"rounds": {str(r): t for r, t in rounds.items()}}, buffer)
            write_private(self.path, buffer.getvalue())
        elif self.context is not None:
            self.context.state[STATE_KEY] = ArrayRecord(
                {str(r): t for r, t in rounds.items()})


def norm_store(node_config: Mapping[str, object], config: Mapping[str, object],
               context: Context | None, site: int) -> NormStore:
    folder = personal_dir(node_config, config)
    run_key = str(config.get(RUN_KEY, ""))
    return NormStore(None if folder is None else norms_path(folder, run_key, site), context)


def restore_norms(model: torch.nn.Module, keys: tuple[str, ...], packed: torch.Tensor | None
                  ) -> None:
    """Load the site's own norm tensors (packed in ``keys`` order) into ``model``; nothing when
    ``packed`` is None (first round: the layers' initial values)."""
    if packed is None or not keys:
        return
    state = model.state_dict()
    own = unpack_state(packed, {k: state[k] for k in keys})
    model.load_state_dict({**state, **own})


def packed_norms(model: torch.nn.Module, keys: tuple[str, ...]) -> torch.Tensor:
    state = model.state_dict()
    return pack_state({k: state[k] for k in keys})
