"""The console command: --help documents every option with its default; bad input is one line."""

import dataclasses

import numpy as np
import pytest

from common.config import RunConfig
from fedclinic.cli import build_parser, main


def _help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    return capsys.readouterr().out


def test_help_lists_every_option_with_its_default(capsys):
    text = " ".join(_help(capsys).split())
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
    assert text.count("(default:") >= len(dataclasses.fields(RunConfig))
    assert "(default: 'synthetic')" in text and "(default: 5)" in text


def test_top_level_help_names_simulate(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "simulate" in capsys.readouterr().out


def _error(capsys, argv: list[str]) -> str:
    code = main(["simulate", *argv])
    err = capsys.readouterr().err
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_unknown_model_is_one_clear_line(capsys):
    line = _error(capsys, ["--model", "vgg16"])
    assert "model='vgg16'" in line and "resnet18" in line


def test_segmentation_model_is_refused_for_classification(capsys):
    line = _error(capsys, ["--model", "unet"])
    assert "segmentation" in line and "resnet18" in line


def test_unknown_strategy_and_partition(capsys):
    assert "fedavg" in _error(capsys, ["--strategy", "fedsgd"])
    assert "unknown term 'zipf'" in _error(capsys, ["--partition", "zipf"])


def test_missing_medmnist_file(capsys, tmp_path):
    missing = tmp_path / "nope.npz"
    line = _error(capsys, ["--dataset", "medmnist", "--data-path", str(missing),
                           "--output-dir", str(tmp_path)])
    assert str(missing) in line


def test_corrupt_and_misshapen_npz(capsys, tmp_path):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"this is not a zip file")
    assert "corrupt.npz" in _error(capsys, ["--dataset", "medmnist", "--data-path", str(corrupt)])
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros((4, 28, 28), np.uint8))
    line = _error(capsys, ["--dataset", "medmnist", "--data-path", str(wrong)])
    assert "wrong.npz" in line and "train_images" in line


def test_more_sites_than_samples(capsys, tmp_path):
    line = _error(capsys, ["--num-samples", "20", "--sites", "50", "--output-dir", str(tmp_path)])
    assert "site" in line.lower()
    assert not any(tmp_path.iterdir()), "no run directory is created for rejected input"


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception):
        main(["simulate", "--num-samples", "20", "--sites", "50", "--debug",
              "--output-dir", str(tmp_path)])


def _parsed(argv: list[str], capsys) -> tuple[RunConfig, str]:
    from fedclinic.cli import config_from_args

    cfg = config_from_args(build_parser().parse_args(["simulate", *argv]))
    return cfg, capsys.readouterr().err


def test_segmentation_brings_settings_that_learn_for_options_not_given(capsys):
    cfg, said = _parsed(["--task", "segmentation"], capsys)
    assert (cfg.model, cfg.optimizer, cfg.lr, cfg.batch_size, cfg.loss) == (
        "unet", "adam", 0.01, 8, "dice_ce")
    assert "segmentation defaults" in said and "--model unet" in said and "--loss dice_ce" in said
    cfg, _ = _parsed(["--task", "segmentation", "--spatial-dims", "3"], capsys)
    assert cfg.loss == "weighted_ce"
    cfg, said = _parsed(["--task", "segmentation", "--model", "basicunet", "--loss", "dice",
                         "--lr", "0.05"], capsys)         # what the user gives wins
    assert (cfg.model, cfg.loss, cfg.lr, cfg.optimizer) == ("basicunet", "dice", 0.05, "adam")
    assert "--model" not in said and "--optimizer adam" in said
    cfg, said = _parsed([], capsys)                      # classification: nothing changes
    assert cfg == RunConfig() and said == ""


def test_run_and_tradeoff_commands_use_the_same_task_defaults(capsys):
    from server.service import overrides_from_args
    from simulations.tradeoff import spec_from_args

    run = build_parser().parse_args(["run", "--task", "segmentation"])
    assert overrides_from_args(run)["model"] == "unet"
    sweep = build_parser().parse_args(["tradeoff", "--task", "segmentation"])
    assert spec_from_args(sweep).base.loss == "dice_ce"
