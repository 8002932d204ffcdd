"""Run config: validated once, errors name the key, the value and what is allowed."""

import dataclasses
import tomllib
from pathlib import Path

import pytest

from common.config import ConfigError, RunConfig
from common.partition_spec import PartitionSpec, parse_partition

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_valid_and_frozen():
    cfg = RunConfig()
    assert cfg.dataset == "synthetic" and cfg.strategy == "fedavg"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rounds = 3  # type: ignore[misc]


def test_unknown_key_names_key_and_lists_known():
    with pytest.raises(ConfigError, match=r"unknown config key 'epochs'.*local_epochs"):
        RunConfig.from_dict({"epochs": 3})


@pytest.mark.parametrize("key,value,pattern", [
    ("rounds", 0, r"rounds=0: out of range; expected 1 <= rounds"),
    ("lr", -1.0, r"lr=-1.0: out of range"),
    ("model", "vgg", r"model='vgg': not allowed; expected one of resnet10, resnet18"),
    ("strategy", "fedsgd", r"strategy='fedsgd'.*fedavg, fedprox"),
    ("sites", "three", r"sites='three': expected int"),
    ("image_size", 32, r"image_size=32.*28, 64"),
    ("baselines", "local,oracle", r"baselines='local,oracle'.*oracle.*local, pooled"),
])
def test_bad_values_name_key_value_and_allowed(key, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        RunConfig.from_dict({key: value})


def test_strings_from_cli_and_flower_are_coerced_dash_or_underscore():
    cfg = RunConfig.from_dict({"local-epochs": "3", "lr": "0.1", "sites": 5.0})
    assert (cfg.local_epochs, cfg.lr, cfg.sites) == (3, 0.1, 5)
    with pytest.raises(ConfigError, match="expected int"):
        RunConfig.from_dict({"sites": 2.5})


def test_medmnist_needs_a_path():
    with pytest.raises(ConfigError, match="data_path.*medmnist"):
        RunConfig(dataset="medmnist")


@pytest.mark.parametrize("spec,expected", [
    ("iid", PartitionSpec()),
    ("dirichlet:0.5", PartitionSpec(label="dirichlet", alpha=0.5)),
    ("dirichlet:0.5+shift", PartitionSpec(label="dirichlet", alpha=0.5, shift=True)),
    ("pathological:2", PartitionSpec(label="pathological", classes_per_site=2)),
    ("quantity", PartitionSpec(quantity="powerlaw")),
    ("quantity:lognormal+shift", PartitionSpec(quantity="lognormal", shift=True)),
    ("shift", PartitionSpec(shift=True)),
])
def test_partition_grammar(spec, expected):
    assert parse_partition(spec) == expected


@pytest.mark.parametrize("spec,pattern", [
    ("dirichlet", r"needs a float argument"),
    ("dirichlet:abc", r"needs a float argument"),
    ("dirichlet:0", r"must be >= 0.001"),
    ("powerlaw", r"unknown term 'powerlaw'"),
    ("iid+dirichlet:1", r"two label-skew terms"),
    ("quantity:zipf", r"quantity law 'zipf' unknown; expected one of powerlaw, lognormal"),
    ("dirichlet:0.5+quantity", r"quantity skew combines with iid"),
])
def test_partition_errors(spec, pattern):
    with pytest.raises(ConfigError, match=pattern):
        RunConfig(partition=spec)


def test_flower_app_config_matches_runconfig_defaults():
    """`flwr run .` and `fedclinic simulate` must start from the same defaults."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    flower = data["tool"]["flwr"]["app"]["config"]
    assert RunConfig.from_dict(flower) == RunConfig()
    assert set(k.replace("-", "_") for k in flower) == {f.name for f in dataclasses.fields(RunConfig)}


def test_save_load_roundtrip(tmp_path):
    cfg = RunConfig(rounds=7, partition="dirichlet:0.3+shift")
    cfg.save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json") == cfg
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: cannot read run config"):
        RunConfig.load(tmp_path / "bad.json")
