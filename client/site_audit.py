"""`fedclinic site audit`: a deployed site audits, on its own machine, how much the consortium's
model reveals about its patients, and nothing of it leaves the site.

The model is the last global model the site received, which the train task keeps at
``<state>/last-global.npz`` (`save_last_global`), or a ``final_model.pt`` the consortium shared
(``--model``). The audit is `common.mia.audit` on the site's own data: its training split as
members against its test split as non-members (balanced), loss-threshold and difficulty-
calibrated (the run's initial model, rebuilt from the run's seed, as reference), each with a
seeded bootstrap interval. The table is printed and written to ``<state>/audit-report.md``
(0600); the site decides whether to share it.

Threat model (as the site's privacy policy): the coordinator is honest-but-curious, outsiders see
the network, only the site's own machine is trusted; so the audit runs here, offline, and a model
file from the consortium is read as tensors only (``weights_only``: it cannot run code).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from client.site import DATA_PATH, SITE_ID, LocalSite, load_site
from common.config import ConfigError, RunConfig
from common.mia import audit, per_sample_loss
from common.mia_bootstrap import RESAMPLES
from common.models import build_model
from common.packing import pack_state, unpack_state
from common.private_files import write_private
from common.report.tables import audit_text
from common.training.seg_inference import per_sample_seg_loss

LAST_GLOBAL = "last-global.npz"
AUDIT_REPORT = "audit-report.md"
STATE_DIR = "state-dir"        # node config: the site's state folder, if the service sets it
LEDGER_DIR = "ledger-dir"      # ... else the folder above the ledgers (`fedclinic site --state`)


def site_state_dir(node_config: Mapping[str, object]) -> Path | None:
    """The site's state folder (`fedclinic site --state`); None for a simulated site."""
    if node_config.get(STATE_DIR):
        return Path(str(node_config[STATE_DIR]))
    if node_config.get(LEDGER_DIR):
        return Path(str(node_config[LEDGER_DIR])).parent
    return None


def save_last_global(node_config: Mapping[str, object], model: torch.nn.Module, cfg: RunConfig,
                     server_round: int, run_key: str = "") -> Path | None:
    """Keep the global model the server just sent (call before training changes it) at
    ``<state>/last-global.npz`` (0600, atomic), with the run config that rebuilds it: what
    `fedclinic site audit` audits. Does nothing at a simulated site (no state folder)."""
    state = site_state_dir(node_config)
    if state is None:
        return None
    buffer = io.BytesIO()
    np.savez(buffer, model=pack_state(model.state_dict()).numpy(),
             config=np.array(json.dumps(cfg.to_dict())), round=np.array(server_round),
             run=np.array(run_key), saved=np.array(time.strftime("%Y-%m-%d %H:%M:%S %Z")))
    path = state / LAST_GLOBAL
    write_private(path, buffer.getvalue())
    return path


@dataclass(frozen=True)
class AuditedModel:
    """The model to audit, the config it was built from, and where it came from (for people)."""

    cfg: RunConfig
    state: dict[str, torch.Tensor] | np.ndarray    # a state dict, or packed weights
    origin: str


def load_last_global(path: Path) -> AuditedModel:
    """What `save_last_global` wrote (read without pickle)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            cfg = RunConfig.from_dict(json.loads(str(saved["config"])))
            origin = (f"the last global model this site received ({path.name}: round "
                      f"{int(saved['round'])} of run {str(saved['run']) or '?'}, saved "
                      f"{saved['saved']})")
            return AuditedModel(cfg, np.array(saved["model"], dtype=np.float32), origin)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{path}: not a saved global model ({exc})") from None


def load_model_file(path: Path) -> AuditedModel:
    """A run's ``final_model.pt`` (or checkpoint): tensors and plain values only."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        cfg = RunConfig.from_dict(saved["config"])
        state = saved["state_dict"]
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"--model {path}: not a fedclinic model file (final_model.pt with "
                          f"state_dict and config) ({exc})") from None
    return AuditedModel(cfg, state, f"the model file {path} (round {saved.get('round', '?')})")


def audited_model(state: Path, model: Path | None) -> AuditedModel:
    """``--model`` if given, else ``<state>/last-global.npz``."""
    if model is not None:
        return load_model_file(model)
    path = state / LAST_GLOBAL
    if not path.is_file():
        raise ConfigError(f"{path}: no global model saved yet (the site keeps the last one it "
                          f"receives when it trains); give --model final_model.pt to audit a "
                          f"model the consortium shared")
    return load_last_global(path)


def _networks(audited: AuditedModel, site: LocalSite) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the audited model, the run's initial model as the calibration reference)."""
    cfg, task = audited.cfg, site.task

    def build() -> torch.nn.Module:
        return build_model(cfg.model, spatial_dims=task.spatial_dims, in_channels=task.channels,
                           num_classes=task.num_classes, norm=cfg.norm, width=cfg.width)

    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)           # the server's initial model (server.app)
        reference = build()
    model = build()
    weights = audited.state
    try:
        if isinstance(weights, np.ndarray):
            weights = unpack_state(weights, model.state_dict())
        model.load_state_dict(weights)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"the model does not fit this site's data ({task.kind}, "
                          f"{task.num_classes} classes, {task.channels} channel(s)): "
                          f"{exc}") from None
    return model.eval(), reference.eval()


@dataclass(frozen=True)
class SiteAudit:
    """The outcome: the audit (`common.mia.audit` form) and the report written at the site."""

    result: dict
    markdown: str
    report_path: Path


def run_site_audit(data: Path, state: Path, model: Path | None = None, seed: int = 0,
                   resamples: int = RESAMPLES, site_id: int = 0) -> SiteAudit:
    """Audit the model on this site's data (train = members, test = non-members); write
    ``<state>/audit-report.md`` (0600) and return it. Nothing is sent anywhere."""
    audited = audited_model(state, model)
    site = load_site(audited.cfg, {DATA_PATH: str(data), SITE_ID: site_id})
    net, reference = _networks(audited, site)
    loss = per_sample_seg_loss if site.task.kind == "segmentation" else per_sample_loss
    result = audit(net, [(site.train, site.test)], site.task, reference_model=reference,
                   seed=seed, loss=loss, resamples=resamples)
    result = {"sites": {site.site: result["sites"][0]}, "pooled": result["pooled"]}
    text = render_site_audit(result, audited, site, data, seed)
    path = state / AUDIT_REPORT
    write_private(path, text.encode())
    return SiteAudit(result, text, path)


def render_site_audit(result: dict, audited: AuditedModel, site: LocalSite, data: Path,
                      seed: int) -> str:
    """audit-report.md: what was audited, on which data, the table, how to read it."""
    return "\n".join([
        f"# Membership-inference audit at site {site.site}", "",
        "Run locally by `fedclinic site audit`: nothing of it left this site.", "",
        f"Model: {audited.origin}; `{audited.cfg.model}` for {site.task.kind}.", "",
        f"Data: {data}: {len(site.train)} training samples (members) and {len(site.test)} test "
        f"samples (non-members), balanced to the smaller side with seed {seed}. The calibrated "
        f"attack uses the run's initial model (seed {audited.cfg.seed}) as its reference.", "",
        audit_text(result, pooled_label=None, model="this model"), "",
        "An AUC near 0.5 (its interval holding 0.5) and a TPR at 1% FPR near 0.01 mean the "
        "attacks cannot tell this site's training patients from its unseen ones. A lower bound "
        "on leakage, not a proof of privacy: the epsilon of the site's ledger is the guarantee.",
        ""])

