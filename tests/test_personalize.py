"""--personalize: local-norm layers never leave a site (the serialized reply is inspected) and
come back for its next round and its evaluation; finetune chooses its epoch on the val split,
never on the test split; the report's personalised column and "did federation help"."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from client.personal_state import NormStore, norms_path
from common.config import RunConfig
from common.datasets import load_dataset
from common.models import build_model
from common.packing import PACKED_KEY, pack_state
from common.partitions.federation import build_federation
from common.report.personalised import PersonalisedScores, best_option_helped
from common.report.tables import sites_table
from common.training import personalize
from common.training.local_norm import (federated_keys, norm_keys, pack_federated,
                                        unpack_federated)
from common.wire import PERSONAL_DIR_KEY, RUN_KEY

BASE = dict(num_samples=120, sites=2, model="cnn", width=8, batch_size=16, local_epochs=1,
            baselines="", rounds=2, personalize="local-norm")


@pytest.fixture
def task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 7), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _model(cfg: RunConfig):
    task = load_dataset(cfg).task
    return build_model(cfg.model, spatial_dims=task.spatial_dims, in_channels=task.channels,
                       num_classes=task.num_classes, norm=cfg.norm, width=cfg.width)


def _request(cfg: RunConfig, kind: str, server_round: int, weights: torch.Tensor,
             personal: str) -> Message:
    config = ConfigRecord({**cfg.to_dict(), "server-round": server_round, RUN_KEY: "run-a",
                           PERSONAL_DIR_KEY: personal})
    content = RecordDict({"config": config, "arrays": ArrayRecord({PACKED_KEY: weights})})
    return Message(content, dst_node_id=1, message_type=kind)


def _wire(reply: Message) -> bytes:
    return b"".join(o.deflate() for o in get_all_nested_objects(reply.content).values())


def test_norm_keys_are_the_normalisation_layers_only():
    model = _model(RunConfig(**BASE))
    norms = norm_keys(model)
    assert norms and all(".weight" in k or ".bias" in k for k in norms)
    named = dict(model.named_modules())
    for key in norms:
        assert isinstance(named[key.rsplit(".", 1)[0]], torch.nn.GroupNorm)
    assert set(federated_keys(model, "local-norm")) == set(model.state_dict()) - set(norms)
    assert federated_keys(model, "off") == tuple(model.state_dict())


def test_local_norm_layers_never_leave_the_site(task_identity, tmp_path):
    from client.app import evaluate_site, train

    cfg = RunConfig(**BASE)
    model = _model(cfg)
    keys = norm_keys(model)
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                  state=RecordDict(), run_config={})
    shared = pack_federated(model, "local-norm")
    assert shared.numel() == sum(t.numel() for k, t in model.state_dict().items()
                                 if k not in keys)
    reply = train(_request(cfg, "train", 1, shared, str(tmp_path)), ctx)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    sent = reply.content["arrays"][PACKED_KEY].numpy()
    assert sent.size == shared.numel()                 # only the shared tensors travel
    # the site's trained norm layers: kept in its store, their bytes absent from the wire
    store = NormStore(norms_path(tmp_path, "run-a", 0))
    own = store.latest(1, before=False)
    assert own is not None and own.numel() == sum(model.state_dict()[k].numel() for k in keys)
    wire = _wire(reply)
    offset = 0
    for key in keys:
        n = model.state_dict()[key].numel()
        chunk = own[offset:offset + n].numpy().astype(np.float32)
        offset += n
        if np.allclose(chunk, chunk.flat[0]):
            continue                                  # a constant vector says nothing
        assert chunk.tobytes() not in wire, key
    initial = torch.cat([model.state_dict()[k].reshape(-1) for k in keys])
    assert not torch.allclose(own, initial)            # they did train
    # next round: the site trains from its own layers, not the model's initial ones
    before = store.latest(2, before=True)
    assert torch.equal(before, own)
    # evaluation uses the site's layers too
    rep = evaluate_site(_request(cfg, "evaluate", 1, torch.as_tensor(sent), str(tmp_path)), ctx)
    assert not rep.has_error()


def test_local_norm_round_trip_keeps_the_base_norms():
    cfg = RunConfig(**BASE)
    model = _model(cfg)
    keys = norm_keys(model)
    with torch.no_grad():
        for k in keys:
            model.state_dict()[k].fill_(3.0)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    other = _model(cfg)
    full = unpack_federated(pack_federated(other, "local-norm"), model, "local-norm", base)
    for k in keys:
        assert torch.equal(full[k], base[k])
    for k in federated_keys(model, "local-norm"):
        assert torch.equal(full[k], other.state_dict()[k])


def test_a_deployed_site_keeps_its_layers_in_its_state_folder(tmp_path):
    from client.personal_state import personal_dir

    deployed = {"data-path": "/data", "state-dir": str(tmp_path)}
    # a deployed site never writes where the server says
    assert personal_dir(deployed, {PERSONAL_DIR_KEY: "/elsewhere"}) == tmp_path / "personal"
    store = NormStore(norms_path(personal_dir(deployed, {}), "run-b", 3))
    store.save(1, torch.arange(4.0))
    assert (store.path.stat().st_mode & 0o777) == 0o600
    assert (store.path.parent.stat().st_mode & 0o777) == 0o700
    assert torch.equal(store.latest(5, before=True), torch.arange(4.0))
    assert store.latest(1, before=True) is None


def test_finetune_chooses_its_epoch_on_the_val_split_only(monkeypatch):
    cfg = RunConfig(**{**BASE, "personalize": "finetune"})
    fed = build_federation(load_dataset(cfg), cfg)
    site = fed.sites[0]
    trained, scored = [], []
    losses = iter([0.9, 0.7, 0.5, 0.8])         # epochs 0..3: epoch 2 is the best

    def fake_train(model, split, *args, **kwargs):
        trained.append(split)
        with torch.no_grad():
            next(model.parameters()).add_(1.0)   # a visible change per epoch

    def fake_evaluate(model, split, task):
        scored.append(split)
        return {"loss": next(losses)}

    monkeypatch.setattr(personalize, "train_local", fake_train)
    monkeypatch.setattr(personalize, "evaluate", fake_evaluate)
    model = _model(cfg)
    start = next(model.parameters()).detach().clone()
    tuned = personalize.finetune(model, site.train, site.val, fed.task, cfg, epochs=3, seed=0)
    assert all(s is site.train for s in trained) and len(trained) == 3
    assert all(s is site.val for s in scored) and len(scored) == 4
    assert not any(s is site.test for s in trained + scored)
    assert tuned.epoch == 2 and tuned.criterion == "val_loss"
    assert tuned.scores == {0: 0.9, 1: 0.7, 2: 0.5, 3: 0.8}
    assert torch.allclose(next(model.parameters()), start + 2.0)   # epoch 2 kept


def test_simulated_finetune_passes_train_and_val_and_scores_on_test(monkeypatch):
    from simulations import personalised

    cfg = RunConfig(**{**BASE, "personalize": "finetune", "finetune_epochs": 2})
    fed = build_federation(load_dataset(cfg), cfg)
    calls, evaluated = [], []

    def fake_finetune(model, train, val, task, cfg_, *, epochs, seed, patience=0):
        calls.append((train, val, epochs))
        return personalize.Finetuned(1, epochs, "val_loss", {0: 1.0, 1: 0.5})

    def fake_evaluate(model, split, task):
        evaluated.append(split)
        return {"auc": 0.5, "accuracy": 0.5}

    chose, scored = [], []
    real_point, real_scored = personalised.operating_point_of, personalised.scored_at

    def spy_point(model, val, *args):
        chose.append(val)
        return real_point(model, val, *args)

    def spy_scored(point, model, split, fed_):
        scored.append(split)
        return real_scored(point, model, split, fed_)

    monkeypatch.setattr(personalised, "finetune", fake_finetune)
    monkeypatch.setattr(personalised, "evaluate", fake_evaluate)
    monkeypatch.setattr(personalised, "operating_point_of", spy_point)
    monkeypatch.setattr(personalised, "scored_at", spy_scored)
    scores = personalised.finetuned_scores(cfg, fed, lambda: _model(cfg), lambda line: None)
    # each site's operating point from its own val split only, scored on its test split
    assert [v is s.val for v, s in zip(chose, fed.sites)] == [True] * len(fed.sites)
    assert [t is s.test for t, s in zip(scored, fed.sites)] == [True] * len(fed.sites)
    assert set(scores.at_operating_point) == {str(s.site) for s in fed.sites}
    assert all({"balanced_accuracy", "sensitivity"} <= set(m)
               for m in scores.at_operating_point.values())
    assert [(c[0], c[1]) for c in calls] == [(s.train, s.val) for s in fed.sites]
    assert all(c[2] == 2 for c in calls)
    assert all(any(t is s.test for t in evaluated) for s in fed.sites)
    assert not any(c[0] is s.test or c[1] is s.test for c in calls for s in fed.sites)
    assert scores.chosen["0"]["epoch"] == 1


def test_federation_helped_takes_the_better_federated_option():
    fed = {"0": {"auc": 0.70}, "1": {"auc": 0.90}}
    mine = {"0": {"auc": 0.80}, "1": {"auc": 0.85}}
    local = {"0": {"auc": 0.75}, "1": {"auc": 0.80}}
    helped = best_option_helped(fed, mine, local)
    assert helped["0"]["option"] == "personalised" and helped["0"]["helped"]
    assert helped["0"]["delta"] == pytest.approx(0.05)
    assert helped["1"]["option"] == "federated" and helped["1"]["delta"] == pytest.approx(0.10)
    summary = {"federated": {"sites": fed, "global": {}},
               "personalised": PersonalisedScores("finetune", mine).to_json(),
               "local": {"sites": local, "global": {}}, "site_counts": {},
               "federation_helped": helped}
    table = sites_table(summary)
    assert "personalised AUC" in table and "yes (+0.050 AUC, personalised)" in table


def test_a_deployed_site_fine_tunes_at_the_last_round_and_keeps_it(tmp_path, monkeypatch):
    from client import personalize_task
    from client.site import LocalSite

    cfg = RunConfig(**{**BASE, "personalize": "finetune", "finetune_epochs": 1, "rounds": 2})
    fed = build_federation(load_dataset(cfg), cfg)
    part = fed.sites[0]
    site = LocalSite(part.site, part.train, part.test, fed.task, val=part.val)
    given = []
    real = personalize_task.finetune

    def spy(model, train, val, task, cfg_, **kw):
        given.append((train, val))
        return real(model, train, val, task, cfg_, **kw)

    monkeypatch.setattr(personalize_task, "finetune", spy)
    deployed = {"data-path": "/data", "state-dir": str(tmp_path)}
    config = {RUN_KEY: "run-c"}
    model = _model(cfg)
    weights = pack_state(model.state_dict())
    assert personalize_task.finetune_at_site(deployed, config, cfg, site, model, 1) is None
    path = personalize_task.finetune_at_site(deployed, config, cfg, site, model, 2)
    assert given == [(site.train, site.val)]
    assert path.parent == tmp_path / "personal" and (path.stat().st_mode & 0o777) == 0o600
    saved = torch.load(path, weights_only=True)
    assert saved["finetune"]["epochs"] == 1 and "val_loss" == saved["finetune"]["criterion"]
    scores = path.with_suffix(".json")
    assert (scores.stat().st_mode & 0o777) == 0o600
    assert torch.equal(pack_state(model.state_dict()), weights)   # the global model unchanged
    # a simulated site leaves it to the simulator
    simulated = {"partition-id": 0, "num-partitions": 2}
    assert personalize_task.finetune_at_site(simulated, config, cfg, site, model, 2) is None


@pytest.mark.slow
def test_a_local_norm_simulation_reports_the_personalised_column(tmp_path):
    from simulations.simulate import simulate

    cfg = RunConfig(**{**BASE, "num_samples": 200, "rounds": 2, "baselines": "local",
                       "output_dir": str(tmp_path)})
    out = simulate(cfg, echo=lambda line: None)
    summary = out.summary
    assert summary["personalised"]["method"] == "local-norm"
    assert set(summary["personalised"]["sites"]) == {"0", "1"}
    assert all("option" in v for v in summary["federation_helped"].values())
    files = sorted((out.run_dir / "personal").iterdir())
    assert len(files) == 2 and all((f.stat().st_mode & 0o777) == 0o600 for f in files)
    # the sites' own evaluations are the personalised models' (same layers, same test split)
    chosen = summary["selection"]["chosen_round"]
    line = next(h for h in out.history if h["round"] == chosen)["sites"]
    for site, metrics in summary["personalised"]["sites"].items():
        assert metrics["loss"] == pytest.approx(line[site]["test"]["loss"])
    assert "personalised AUC" in (out.run_dir / "sites.md").read_text()
    ops = summary["operating_point"]["personalised"]
    assert set(ops["sites"]) == {"0", "1"} and "own validation split" in ops["rule"]
    assert "| personalised | sites' own (mean) |" in (out.run_dir / "report.md").read_text()


def test_without_a_folder_a_simulated_site_keeps_its_layers_in_its_context():
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(),
                  run_config={})
    store = NormStore(None, ctx)
    store.save(1, torch.arange(3.0))
    store.save(2, torch.ones(3))
    assert torch.equal(store.latest(2, before=True), torch.arange(3.0))
    assert torch.equal(store.latest(2, before=False), torch.ones(3))
    assert store.latest(1, before=True) is None


def test_finetune_of_a_dp_run_trains_with_the_sites_own_logit_adjusted_loss():
    """Under dp='sample' with the logit-adjusted loss, fine-tuning (no DP-SGD, the model stays
    at the site) uses the prior of the site's own labels: it needs no noised counts (this
    failed a whole `--personalize finetune --dp sample` run at its end)."""
    cfg = RunConfig(**{**BASE, "personalize": "finetune", "dp": "sample",
                       "loss": "logit_adjusted"})
    fed = build_federation(load_dataset(cfg), cfg)
    site = fed.sites[0]
    model = _model(cfg)
    before = [p.detach().clone() for p in model.parameters()]
    tuned = personalize.finetune(model, site.train, site.val, fed.task, cfg, epochs=2, seed=0)
    assert tuned.epochs == 2 and tuned.criterion == "val_loss" and set(tuned.scores) == {0, 1, 2}
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert changed == (tuned.epoch > 0)
