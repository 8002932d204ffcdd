"""Which data a ClientApp trains on: a simulated site's partition, or a site's own files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from common.config import ConfigError, RunConfig
from common.datasets import Split, TaskInfo, load_dataset

PARTITION_ID = "partition-id"   # set by Flower's simulation engine on each virtual SuperNode
NUM_PARTITIONS = "num-partitions"  # ... with the number of virtual SuperNodes
DATA_PATH = "data-path"         # set by a site operator: `--node-config data-path=...`
SITE_ID = "site-id"


# Privacy settings a site's operator may set for the site alone (`--node-config`), e.g. a
# hospital whose ethics board allows a smaller epsilon than the consortium's default. They may
# only tighten what the server sent (the site's policy, client.policy, sets its floor).
SITE_PRIVACY_KEYS = ("target-epsilon", "noise-multiplier", "delta", "max-grad-norm")

# field -> True when a larger value is the tighter one; 0 (sigma, delta) is "not given".
_TIGHTER_IS_LARGER = {"target_epsilon": False, "noise_multiplier": True, "delta": False,
                      "max_grad_norm": False}


def site_privacy(cfg: RunConfig, node_config: Mapping[str, object]) -> RunConfig:
    """The run config with this site's own privacy overrides applied (validated like the rest).
    An override looser than the server's value (higher epsilon, delta or clipping norm, lower
    noise multiplier) is a ConfigError naming the node config key."""
    overrides = {k: node_config[k] for k in SITE_PRIVACY_KEYS if k in node_config}
    if not overrides:
        return cfg
    mine = RunConfig.from_dict({**cfg.to_dict(), **overrides})
    for key in overrides:
        name = key.replace("-", "_")
        _check_tighter(key, getattr(cfg, name), getattr(mine, name),
                       _TIGHTER_IS_LARGER[name])
    return mine


def _check_tighter(key: str, sent: float, own: float, larger_is_tighter: bool) -> None:
    if sent == 0 or own == sent:          # the server left it to the site, or no change
        return
    looser = own < sent if larger_is_tighter else (own > sent or own == 0)  # 0: the default
    if looser:
        way = "at least" if larger_is_tighter else "at most"
        raise ConfigError(f"node config {key}={own:g} is looser than the run's {sent:g}: a "
                          f"site's own privacy settings may only tighten the run's ({key} "
                          f"{way} {sent:g}); lower epsilon, delta or clipping norm, or raise "
                          f"the noise multiplier")


@dataclass(frozen=True)
class LocalSite:
    site: int
    train: Split
    test: Split
    task: TaskInfo
    skipped: int = 0          # bad data files left out (site data only)
    val: Split | None = None  # the site's validation split (model selection), if it has one


def load_site(cfg: RunConfig, node_config: Mapping[str, object]) -> LocalSite:
    """Simulation: rebuild this node's partition (deterministic from cfg). Deployment: read the
    site's own data given as node config `data-path` (MedMNIST .npz, DICOM or MSD folder, detected
    from what is there); the run's other settings (image size, window, ...) come from the server."""
    if PARTITION_ID in node_config:
        # Imported here: only simulated sites need the partitioner.
        from common.partitions.loader import site_data

        engine_sites = int(node_config.get(NUM_PARTITIONS, cfg.sites))
        if engine_sites != cfg.sites:
            raise ConfigError(f"the simulation engine runs {engine_sites} virtual sites but the run "
                              f"config says sites={cfg.sites}; make them equal (flwr run: "
                              f"--federation-config 'num-supernodes={cfg.sites}')")
        part = site_data(cfg, int(node_config[PARTITION_ID]))
        return LocalSite(part.site, part.train, part.test, load_dataset(cfg).task,
                         val=part.val)
    if DATA_PATH in node_config:
        from common.datasets.layout import detect_layout

        layout = detect_layout(Path(str(node_config[DATA_PATH])))
        local_cfg = cfg.replace(dataset=layout, data_path=str(node_config[DATA_PATH]))
        data = load_dataset(local_cfg)
        if data.test is None:
            raise ConfigError(f"{node_config[DATA_PATH]}: the site's file has no test split")
        site = int(node_config.get(SITE_ID, 0))
        return LocalSite(site, data.train, data.test, data.task, len(data.skipped),
                         val=data.val)
    raise ConfigError(f"node config has neither '{PARTITION_ID}' (simulation) nor '{DATA_PATH}' "
                      f"(a site's data file); got keys {sorted(node_config)}")
