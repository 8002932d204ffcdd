"""The ClientApp a site runs: E local epochs on its data, evaluation on its own test split.

The same app runs under Flower's simulation engine and on a real SuperNode. The server sends the
whole run config in each message (ConfigRecord "config"), so a site needs no copy of it.
"""

from __future__ import annotations

import os
import time
import zlib

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.site import LocalSite, load_site
from common.config import ConfigError, RunConfig
from common.models import build_model
from common.training import evaluate, train_local

# Keys Flower strategies add to the config record next to the run config.
FLOWER_KEYS = ("server-round", "proximal-mu")

app = ClientApp()


def _setup(msg: Message, context: Context) -> tuple[RunConfig, LocalSite, torch.nn.Module, int]:
    torch.set_num_threads(int(os.environ.get("FEDCLINIC_CLIENT_THREADS", "1")))
    config = dict(msg.content["config"])
    server_round = int(config.get("server-round", 0))
    cfg = RunConfig.from_dict({k: v for k, v in config.items() if k not in FLOWER_KEYS})
    site = load_site(cfg, context.node_config)
    model = build_model(cfg.model, spatial_dims=site.task.spatial_dims,
                        in_channels=site.task.channels, num_classes=site.task.num_classes,
                        norm=cfg.norm, width=cfg.width)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return cfg, site, model, server_round


def local_seed(seed: int, server_round: int, site: int) -> int:
    """A distinct, reproducible seed per (run seed, round, site)."""
    return zlib.crc32(f"{seed}/{server_round}/{site}".encode())


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, site, model, server_round = _setup(msg, context)
    if cfg.dp != "off":  # fail closed: never train without the privacy that was asked for
        raise ConfigError(f"dp={cfg.dp!r} is not supported by this site's fedclinic version")
    mu = float(msg.content["config"].get("proximal-mu", 0.0))
    global_params = [p.detach().clone() for p in model.parameters()] if mu > 0 else None
    start = time.perf_counter()
    result = train_local(model, site.train, site.task, cfg, epochs=cfg.local_epochs,
                         seed=local_seed(cfg.seed, server_round, site.site),
                         proximal_mu=mu, global_params=global_params)
    metrics = MetricRecord({
        "num-examples": len(site.train),   # FedAvg weights by training samples, not batches
        "train_loss": result.loss,
        "train_seconds": result.seconds,
        "client_seconds": time.perf_counter() - start,
        "steps": result.steps,
        "proximal_mu": mu,
        "site": site.site,
    })
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_site(msg: Message, context: Context) -> Message:
    cfg, site, model, _ = _setup(msg, context)
    result = evaluate(model, site.test, site.task, batch_size=max(cfg.batch_size, 128))
    metrics = {k: float(v) for k, v in result.items() if k != "num_examples"}
    metrics.update({"num-examples": len(site.test), "site": site.site})
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
