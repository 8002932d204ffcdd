"""What every task of the ClientApp starts with: the run config the server sent, this site's
data and the global model loaded from the message (under local-norm: the shared weights from
the message, the normalisation layers from the site's own store, `client.personal_state`)."""

from __future__ import annotations

import os

import torch
from flwr.app import Context, Message, MessageType

from client.personal_state import norm_store, restore_norms
from client.site import LocalSite, load_site
from common.config import RunConfig
from common.models import build_model
from common.packing import PACKED_KEY
from common.training.local_norm import local_keys, unpack_federated
from common.wire import EXTRA_CONFIG_KEYS


def task_setup(msg: Message, context: Context) -> tuple[RunConfig, LocalSite, torch.nn.Module, int]:
    torch.set_num_threads(int(os.environ.get("FEDCLINIC_CLIENT_THREADS", "1")))
    config = dict(msg.content["config"])
    server_round = int(config.get("server-round", 0))
    run_config = {k: v for k, v in config.items() if k not in EXTRA_CONFIG_KEYS}
    cfg = RunConfig.from_dict(run_config)
    site = load_site(cfg, context.node_config)
    model = build_model(cfg.model, spatial_dims=site.task.spatial_dims,
                        in_channels=site.task.channels, num_classes=site.task.num_classes,
                        norm=cfg.norm, width=cfg.width)
    packed = msg.content["arrays"][PACKED_KEY].numpy()
    model.load_state_dict(unpack_federated(packed, model, cfg.personalize))
    keys = local_keys(model, cfg.personalize)
    if keys:                 # local-norm: this site's own norm layers, never sent by the server
        store = norm_store(context.node_config, config, context, site.site)
        before = msg.metadata.message_type.split(".", 1)[0] == MessageType.TRAIN
        restore_norms(model, keys, store.latest(server_round, before=before))
    return cfg, site, model, server_round
