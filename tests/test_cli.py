"""The console command: --help documents every option with its default; bad input is one line."""

import argparse
import dataclasses

import numpy as np
import pytest

from common.task_defaults import CLASSIFICATION_RECIPE, DP_CLASSIFICATION_RECIPE
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
    lines = [line for line in err.splitlines()     # the task defaults' note aside
             if line.strip() and "defaults for options not given" not in line]
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
    from fedclinic.cli.options import config_from_args

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
    cfg, said = _parsed([], capsys)                      # classification: its recipe
    assert cfg == RunConfig(**CLASSIFICATION_RECIPE)
    assert "classification defaults" in said and "--lr-schedule cosine" in said
    cfg, said = _parsed(["--dp", "sample"], capsys)      # under DP: its own
    assert cfg == RunConfig(dp="sample", **DP_CLASSIFICATION_RECIPE)
    assert "classification defaults" in said and "--loss logit_adjusted" in said


def test_run_and_tradeoff_commands_use_the_same_task_defaults(capsys):
    from fedclinic.cli.server import overrides_from_args
    from fedclinic.cli.tradeoff import spec_from_args

    run = build_parser().parse_args(["run", "--task", "segmentation"])
    assert overrides_from_args(run)["model"] == "unet"
    sweep = build_parser().parse_args(["tradeoff", "--task", "segmentation"])
    assert spec_from_args(sweep).base.loss == "dice_ce"


# --- the one CLI layer: flags from RunConfig, switches, metavars ------------------------------

def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _all_parsers(sub)
    return found


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings
            and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def test_a_bool_field_is_a_switch_and_unset_stays_unset():
    from fedclinic.cli.options import config_from_args, given_options

    parse = build_parser().parse_args
    assert parse(["simulate", "--strict"]).strict is True
    assert parse(["simulate", "--no-strict"]).strict is False
    assert parse(["simulate"]).strict is None
    assert "strict" not in given_options(parse(["simulate"]))
    assert config_from_args(parse(["simulate", "--strict"])).strict is True
    with pytest.raises(SystemExit):
        parse(["simulate", "--strict", "true"])          # a switch takes no value


def test_every_bool_run_option_of_every_command_is_a_switch():
    bools = {f.name for f in dataclasses.fields(RunConfig) if isinstance(f.default, bool)}
    assert bools, "RunConfig has a bool field to test"
    top = next(a for a in build_parser()._actions
               if isinstance(a, argparse._SubParsersAction)).choices
    for command in ("simulate", "run", "tradeoff", "demo-data"):
        switches = {a.dest: a for a in _options(top[command]) if a.dest in bools}
        assert set(switches) == bools, command
        for action in switches.values():
            assert isinstance(action, argparse.BooleanOptionalAction), (command, action)
            assert action.default is None


def test_metavars_say_what_is_expected_for_every_option_of_every_command():
    bad = []
    for parser in _all_parsers(build_parser()):
        for action in _options(parser):
            if action.nargs == 0:
                continue                                   # a switch shows no metavar
            shown = action.metavar or (action.choices and "{...}")
            if not shown or shown in ("STR", "INT", "FLOAT", "BOOL"):
                bad.append(f"{parser.prog} {action.option_strings[0]}: {action.metavar!r}")
    assert not bad, "\n".join(bad)


def test_every_option_of_every_command_ends_with_its_default():
    bad = [f"{parser.prog} {action.option_strings[0]}"
           for parser in _all_parsers(build_parser()) for action in _options(parser)
           if not (action.help or "").endswith(")") or "(default: " not in action.help]
    assert not bad, "\n".join(bad)


def test_run_options_come_from_one_helper_with_the_same_flags_everywhere():
    """simulate, run and demo-data take every RunConfig field; tradeoff all but the swept ones."""
    from fedclinic.cli.options import describe_fields
    from simulations.tradeoff.spec import SWEPT

    top = next(a for a in build_parser()._actions
               if isinstance(a, argparse._SubParsersAction)).choices
    fields = {f.name for f in describe_fields()}
    for command, expected in (("simulate", fields), ("run", fields), ("demo-data", fields),
                              ("tradeoff", fields - set(SWEPT))):
        dests = {a.dest for a in _options(top[command])}
        assert expected <= dests and not (fields - expected) & dests, command


def test_deployment_commands_hand_typed_options_to_their_packages(monkeypatch, tmp_path):
    """server, run and site read their flags here and call a typed function (no Namespace)."""
    from pathlib import Path

    import client.service
    import server.service

    calls = {}
    monkeypatch.setattr(server.service, "serve",
                        lambda *a, **k: calls.setdefault("serve", (a, k)) and 0)
    monkeypatch.setattr(server.service, "submit_run",
                        lambda *a, **k: calls.setdefault("submit", (a, k)) and 0)
    monkeypatch.setattr(client.service, "run_site", lambda o: calls.setdefault("site", o) and 0)
    assert main(["server", "--insecure", "--state", str(tmp_path)]) == 0
    assert calls["serve"] == ((None, None, tmp_path, "0.0.0.0:8000"),
                              {"global_test": None, "manifests": None})
    assert main(["run", "--insecure", "--rounds", "3", "--strict", "--detach"]) == 0
    assert calls["submit"] == (("127.0.0.1:8000", None,
                                {"rounds": 3, "strict": True,
                                 **{k.replace("_", "-"): v
                                    for k, v in CLASSIFICATION_RECIPE.items()}}),
                               {"detach": True, "verbose": False})
    assert main(["site", "--data", "d", "--allow-app-hash", "ab", "--threads", "2"]) == 0
    assert calls["site"] == client.service.SiteOptions(data=Path("d"), allow_app_hash=("ab",),
                                                       threads=2)


# ---------------------------------------------------------- exit codes (README "Exit codes")

def _site_exit(capsys, tmp_path, *flags: str) -> tuple[int, str]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    code = main(["site", "--insecure", "--skip-validation", "--data", str(data),
                 "--state", str(tmp_path / "state"), *flags])
    return code, capsys.readouterr().err


def test_a_taken_runtime_port_is_exit_2_naming_the_port(capsys, tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        code, err = _site_exit(capsys, tmp_path, "--runtime-port", str(port))
    assert code == 2
    assert f"--runtime-port {port}: 127.0.0.1:{port} is already in use" in err
    assert "Traceback" not in err


def test_a_bad_policy_file_is_exit_2(capsys, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("require_dp = maybe\n")
    code, err = _site_exit(capsys, tmp_path, "--policy", str(policy))
    assert code == 2 and "--policy" in err and "Traceback" not in err


def test_a_certificate_that_does_not_verify_is_exit_2_wherever_it_is_raised(capsys):
    import argparse
    import ssl

    from fedclinic.cli.errors import ExitCode, run_command

    def connect(_args):
        try:
            raise ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] self-signed")
        except ssl.SSLError as exc:
            raise ConnectionError("could not reach the server") from exc

    args = argparse.Namespace(debug=False)
    assert run_command(connect, args) == ExitCode.CONFIG == 2
    assert "does not verify against --ca-cert" in capsys.readouterr().err
    assert run_command(lambda _: 1 / 0, args) == ExitCode.FAILED == 1
    assert [int(c) for c in ExitCode] == [0, 1, 2, 130]


def test_a_resumed_run_gets_no_task_defaults(capsys):
    """The run's own settings are kept on resume (the recipe's defaults would differ from them)."""
    cfg, said = _parsed(["--resume", "RUN"], capsys)
    assert said == "" and cfg == RunConfig(resume="RUN")
