"""--init-from: a fedclinic model file or a plain state dict starts the federation and the
baselines; a head re-initialised when only the number of classes differs; kernels converted
between 2D and 3D; a clear ConfigError for a missing, broken or mismatched file."""

from pathlib import Path

import pytest
import torch

from common import rundir
from common.config import ConfigError, RunConfig
from common.datasets import load_dataset
from common.models import build_model
from common.partitions.federation import build_federation
from common.training.init import head_keys, initial_state, load_init
from simulations.baselines import initial_model

CFG = dict(num_samples=120, sites=2, model="cnn", width=8, baselines="", rounds=1)


def _net(num_classes: int = 4, width: int = 8, model: str = "cnn") -> torch.nn.Module:
    return build_model(model, spatial_dims=2, in_channels=1, num_classes=num_classes,
                       norm="group", width=width)


def _filled(net: torch.nn.Module, value: float) -> torch.nn.Module:
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.fill_(value)
    return net


def test_a_fedclinic_final_model_is_loaded_whole(tmp_path):
    src = _filled(_net(), 0.25)
    path = tmp_path / rundir.FINAL_MODEL
    rundir.save_model(path, src.state_dict(), {"round": 7, "config": RunConfig().to_dict()})
    net = _net()
    init = initial_state(str(path), net, 4)
    assert init.reinitialised == ()
    assert "final_model.pt (round 7)" in init.note
    for k, v in net.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k


def test_a_plain_state_dict_with_opacus_prefixes(tmp_path):
    src = _filled(_net(), 0.5)
    path = tmp_path / "weights.pt"
    torch.save({f"_module.{k}": v for k, v in src.state_dict().items()}, path)
    net = _net()
    initial_state(str(path), net, 4)
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in net.state_dict().items())


def test_another_number_of_classes_reinitialises_the_head_only(tmp_path):
    src = _filled(_net(num_classes=2), 0.5)
    path = tmp_path / "binary.pt"
    torch.save(src.state_dict(), path)
    torch.manual_seed(0)
    net = _net(num_classes=4)
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    init = initial_state(str(path), net, 4)
    head = set(head_keys(net, 4))
    assert head and set(init.reinitialised) == head
    assert "re-initialised" in init.note and "number of classes" in init.note
    for k, v in net.state_dict().items():
        expected = fresh[k] if k in head else src.state_dict()[k]
        assert torch.equal(v, expected), k


def test_mismatched_layers_are_named_with_their_shapes(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(_net(width=16).state_dict(), path)
    with pytest.raises(ConfigError) as err:
        load_init(path, _net(width=8), 4)
    text = str(err.value)
    assert str(path) in text and "other shapes" in text
    assert "16x1x3x3 in the file, 8x1x3x3 here" in text


def test_missing_and_unexpected_layers_are_named(tmp_path):
    state = _net().state_dict()
    first = next(iter(state))
    state.pop(first)
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(ConfigError, match=rf"missing from the file: {first}.*not in this "
                                           rf"network: extra.weight"):
        load_init(path, _net(), 4)


def _resnet(spatial_dims: int) -> torch.nn.Module:
    return build_model("resnet18", spatial_dims=spatial_dims, in_channels=1, num_classes=2,
                       norm="group", width=8)


def test_a_2d_model_starts_a_3d_run_with_inflated_kernels(tmp_path):
    torch.manual_seed(1)
    src = _resnet(2)
    path = tmp_path / "chest2d.pt"
    torch.save(src.state_dict(), path)
    net = _resnet(3)
    init = initial_state(str(path), net, 2)
    convs = [k for k, v in src.state_dict().items() if v.dim() == 4]
    assert convs and set(init.converted) == set(convs) and init.reinitialised == ()
    assert f"{len(convs)} convolution kernels converted" in init.note
    for k, v in net.state_dict().items():
        w = src.state_dict()[k]
        if k in convs:             # repeated along depth, divided by its length
            depth = v.shape[2]
            assert v.shape == w.shape[:2] + (depth,) + w.shape[2:], k
            assert all(torch.allclose(v[:, :, d] * depth, w) for d in range(depth)), k
        else:
            assert torch.equal(v, w), k


def test_an_inflated_kernel_answers_a_depth_constant_input_as_the_2d_one():
    torch.manual_seed(2)
    conv2, conv3 = torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.Conv3d(2, 3, 3, padding=1)
    from common.training.init import across_dims
    with torch.no_grad():
        conv3.weight.copy_(across_dims(conv2.weight, conv3.weight))
        conv3.bias.copy_(conv2.bias)
        image = torch.randn(1, 2, 6, 6)
        volume = image.unsqueeze(2).repeat(1, 1, 5, 1, 1)
        inner = conv3(volume)[:, :, 1:-1]           # away from the depth borders' zero padding
        assert torch.allclose(inner, conv2(image).unsqueeze(2).expand_as(inner), atol=1e-6)
        back = across_dims(conv3.weight, conv2.weight)     # 3D -> 2D: summed over depth
        assert torch.allclose(back, conv2.weight, atol=1e-6)


def test_a_3d_model_starts_a_2d_run_and_other_shapes_still_fail(tmp_path):
    path = tmp_path / "ct3d.pt"
    torch.save(_resnet(3).state_dict(), path)
    init = load_init(path, _resnet(2), 2)
    assert init.converted and all(init.state[k].dim() == 4 for k in init.converted)
    wide = build_model("resnet18", spatial_dims=3, in_channels=1, num_classes=2, norm="group",
                       width=16)
    torch.save(wide.state_dict(), path)
    with pytest.raises(ConfigError, match="other shapes: conv1.weight"):
        load_init(path, _resnet(2), 2)


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", b"PK\x03\x04broken"])
def test_a_broken_file_is_a_config_error(tmp_path, content):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="not a readable torch model file"):
        load_init(path, _net(), 4)


def test_a_missing_file_or_a_file_without_weights(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_init(tmp_path / "nope.pt", _net(), 4)
    path = tmp_path / "numbers.pt"
    torch.save({"round": 3}, path)
    with pytest.raises(ConfigError, match="holds no state dict"):
        load_init(path, _net(), 4)


def test_the_server_and_both_baselines_start_from_the_file(tmp_path):
    from server.app import _round_log

    src = _filled(_net(), 0.125)
    path = tmp_path / "pre.pt"
    torch.save(src.state_dict(), path)
    cfg = RunConfig(**CFG, init_from=str(path))
    said = []
    _, initial = _round_log(cfg, tmp_path, said.append)
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in initial.items())
    assert any("init-from" in line for line in said)
    fed = build_federation(load_dataset(cfg), cfg)
    base = initial_model(cfg, fed)                 # local and pooled start from it
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in base.state_dict().items())


def test_a_bad_file_stops_a_simulation_before_any_round(tmp_path):
    from simulations.simulate import simulate

    path = tmp_path / "bad.pt"
    path.write_text("junk")
    cfg = RunConfig(**CFG, init_from=str(path), output_dir=str(tmp_path / "runs"))
    with pytest.raises(ConfigError, match="init_from="):
        simulate(cfg, echo=lambda line: None)
