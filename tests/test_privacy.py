"""DP planning and accounting: Opacus-exact numbers, whole-run calibration, resumable ledgers."""

import argparse
import json

import pytest
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from torch.utils.data import DataLoader, TensorDataset

from common.config import ConfigError, RunConfig
from common.privacy.accounting import epsilon_of_history
from common.privacy.ledger import BudgetExhausted, PrivacyLedger
from common.privacy.planner import default_delta, plan, plan_from_config, poisson_sampling
from fedclinic.cli import privacy as privacy_cli

# (sigma, q, steps, delta) -> epsilon, computed once with Opacus 1.6's RDPAccountant.
GOLDEN = [
    ((1.0, 1 / 63, 630, 1e-4), 2.31457),
    ((1.1, 0.01, 1000, 1e-5), 1.71177),
    ((0.8, 0.05, 200, 1e-3), 6.15358),
]


@pytest.mark.parametrize(("entry", "expected"), GOLDEN)
def test_ledger_matches_opacus_rdp_and_golden_numbers(entry, expected):
    sigma, q, steps, delta = entry
    opacus_acc = RDPAccountant()
    for _ in range(steps):
        opacus_acc.step(noise_multiplier=sigma, sample_rate=q)
    ledger = PrivacyLedger("rdp")
    ledger.record(sigma, q, steps)
    assert ledger.epsilon(delta) == pytest.approx(opacus_acc.get_epsilon(delta), rel=1e-12)
    assert ledger.epsilon(delta) == pytest.approx(expected, rel=1e-3)
    assert ledger.steps == steps


def test_ledger_with_changing_noise_matches_opacus_step_by_step():
    opacus_acc, ledger = RDPAccountant(), PrivacyLedger()
    for sigma, q, steps in [(1.0, 0.02, 50), (1.0, 0.02, 50), (1.5, 0.02, 30), (1.0, 0.05, 20)]:
        for _ in range(steps):
            opacus_acc.step(noise_multiplier=sigma, sample_rate=q)
        ledger.record(sigma, q, steps)
    assert [list(e) for e in ledger.history] == [list(e) for e in opacus_acc.history]
    assert ledger.epsilon(1e-5) == pytest.approx(opacus_acc.get_epsilon(1e-5), rel=1e-12)


@pytest.mark.parametrize(("n", "batch"), [(186, 2), (1000, 16), (16, 16)])
def test_sampling_schedule_is_what_opacus_make_private_accounts(n, batch):
    """Steps per epoch, accounted q and expected batch equal those of a real DP-SGD epoch
    (n=186, B=2: 93 loader batches but int(1/(1/93)) = 92 Poisson batches)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Linear(2, 2)
    loader = DataLoader(TensorDataset(torch.randn(n, 2), torch.randint(0, 2, (n,))),
                        batch_size=batch)
    engine = PrivacyEngine(accountant="rdp")
    model, optim, dp_loader = engine.make_private(module=model, optimizer=torch.optim.SGD(
        model.parameters(), lr=0.1), data_loader=loader, noise_multiplier=1.3, max_grad_norm=1.0)
    for x, y in dp_loader:
        optim.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optim.step()
    q, steps = poisson_sampling(n, batch)
    assert len(dp_loader) == steps
    assert engine.accountant.history == [(1.3, q, steps)]
    p = plan(n, batch, local_epochs=1, rounds=1, noise_multiplier=1.3, delta=0.1 / n)
    assert p.expected_batch_size == optim.expected_batch_size
    assert p.noise_std_per_coordinate == pytest.approx(1.3 * 1.0 / optim.expected_batch_size)
    assert p.epsilon == pytest.approx(engine.get_epsilon(0.1 / n), rel=1e-12)


def test_default_delta_is_a_tenth_of_one_over_n():
    assert default_delta(1000) == pytest.approx(1e-4)
    assert default_delta(7) < 1 / 7


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_calibrated_sigma_spends_at_most_the_target_and_almost_all_of_it(target):
    p = plan(1000, 16, local_epochs=2, rounds=5, target_epsilon=target)
    assert p.total_steps == 5 * p.steps_per_round == 5 * 2 * 63
    assert p.target_epsilon == target
    assert 0.98 * target <= p.epsilon <= target
    whole_run = epsilon_of_history([(p.noise_multiplier, p.sample_rate, p.total_steps)],
                                   p.delta, "rdp")
    assert p.epsilon == whole_run
    if target == 1.0:   # Opacus' own calibration (absolute tolerance 0.01) agrees
        reference = get_noise_multiplier(target_epsilon=target, target_delta=p.delta,
                                         sample_rate=p.sample_rate, steps=p.total_steps)
        assert p.noise_multiplier == pytest.approx(reference, rel=0.01)


def test_more_rounds_need_more_noise_for_the_same_budget():
    sigmas = [plan(500, 20, 1, rounds, target_epsilon=4.0).noise_multiplier
              for rounds in (2, 10, 50)]
    assert sigmas[0] < sigmas[1] < sigmas[2]


def test_fixed_sigma_plan_reports_whole_run_epsilon():
    p = plan(1000, 16, 2, 5, noise_multiplier=1.0, delta=1e-4)
    assert p.target_epsilon is None and p.noise_multiplier == 1.0
    assert p.sample_rate == pytest.approx(1 / 63) and p.steps_per_round == 126
    assert p.epsilon == pytest.approx(GOLDEN[0][1], rel=1e-3)   # same (sigma, q, 630, delta)
    assert p.epsilon_after(0) == 0.0
    assert p.epsilon_after(5) == p.epsilon


def test_ledger_rounds_reach_the_planned_epsilon_and_never_decrease():
    p = plan(800, 32, local_epochs=3, rounds=6, target_epsilon=5.0)
    ledger, spent = PrivacyLedger(), []
    for r in range(1, p.rounds + 1):
        ledger.record(p.noise_multiplier, p.sample_rate, p.steps_per_round)
        spent.append(ledger.epsilon(p.delta))
        assert spent[-1] == pytest.approx(p.epsilon_after(r), rel=1e-12)
    assert all(a < b for a, b in zip(spent, spent[1:]))
    assert spent[-1] == pytest.approx(p.epsilon, rel=1e-12) and spent[-1] <= 5.0
    assert ledger.history == ((p.noise_multiplier, p.sample_rate, p.total_steps),)
    assert spent[-1] == pytest.approx(
        epsilon_of_history([list(e) for e in ledger.history], p.delta, "rdp"), rel=0.01)


def test_state_dict_roundtrip_resumes_exactly():
    rounds = [(1.2, 0.03, 40)] * 3 + [(0.9, 0.03, 40)] * 2
    straight = PrivacyLedger()
    for entry in rounds:
        straight.record(*entry)
    first = PrivacyLedger()
    for entry in rounds[:3]:
        first.record(*entry)
    state = json.loads(json.dumps(first.state_dict()))
    assert state == {"accountant": "rdp", "history": [[1.2, 0.03, 120]]}
    resumed = PrivacyLedger.from_state(state)
    for entry in rounds[3:]:
        resumed.record(*entry)
    assert resumed.history == straight.history
    assert resumed.epsilon(1e-5) == straight.epsilon(1e-5)
    other = PrivacyLedger()
    other.load_state_dict(json.loads(json.dumps(straight.state_dict())))
    assert other.epsilon(1e-5) == straight.epsilon(1e-5) and other.steps == 200


def test_epsilon_if_previews_without_recording():
    ledger = PrivacyLedger()
    assert ledger.epsilon(1e-5) == 0.0
    ledger.record(1.1, 0.02, 100)
    before_state, before = ledger.state_dict(), ledger.epsilon(1e-5)
    preview = ledger.epsilon_if(1.1, 0.02, 100, 1e-5)
    assert ledger.state_dict() == before_state and ledger.epsilon(1e-5) == before
    assert preview > before
    ledger.record(1.1, 0.02, 100)
    assert ledger.epsilon(1e-5) == preview


def test_check_budget_raises_budget_exhausted_with_numbers():
    ledger = PrivacyLedger()
    ledger.record(1.0, 0.05, 100)
    spent = ledger.epsilon(1e-4)
    after = ledger.check_budget(100.0, 1.0, 0.05, 100, 1e-4)
    assert after == ledger.epsilon_if(1.0, 0.05, 100, 1e-4)
    with pytest.raises(BudgetExhausted) as info:
        ledger.check_budget(spent * 1.01, 1.0, 0.05, 100, 1e-4, site=3)
    exc = info.value
    assert exc.site == 3 and exc.epsilon == pytest.approx(after) and exc.spent == spent
    assert "site 3" in str(exc) and f"{after:.4g}" in str(exc)
    assert ledger.steps == 100


def test_prv_is_tighter_than_rdp_and_close():
    history = [(1.0, 0.05, 200)]
    rdp = epsilon_of_history(history, 1e-5, "rdp")
    prv = epsilon_of_history(history, 1e-5, "prv")
    assert 0.7 * rdp < prv <= rdp
    ledger = PrivacyLedger("prv")
    ledger.record(1.0, 0.05, 120)
    ledger.record(1.0, 0.05, 80)
    assert ledger.epsilon(1e-5) == pytest.approx(prv, rel=1e-9)


def test_prv_calibration_meets_the_target():
    p = plan(200, 20, local_epochs=1, rounds=5, target_epsilon=3.0, accountant="prv")
    assert 0.98 * 3.0 <= p.epsilon <= 3.0
    rdp_sigma = plan(200, 20, local_epochs=1, rounds=5, target_epsilon=3.0).noise_multiplier
    assert p.noise_multiplier <= rdp_sigma


def test_prv_refuses_a_grid_that_would_exhaust_memory():
    with pytest.raises(ConfigError, match="accountant='rdp'"):
        epsilon_of_history([(0.1, 1 / 63, 630)], 1e-4, "prv")


@pytest.mark.parametrize(("kwargs", "names"), [
    (dict(n_train=0), "n_train=0"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(local_epochs=0), "local_epochs=0"),
    (dict(rounds=2.5), "rounds=2.5"),
    (dict(target_epsilon=None), "exactly one"),
    (dict(noise_multiplier=1.0), "exactly one"),
    (dict(target_epsilon=-1.0), "target_epsilon=-1.0"),
    (dict(target_epsilon=float("nan")), "target_epsilon=nan"),
    (dict(target_epsilon=None, noise_multiplier=0.0), "noise_multiplier=0.0"),
    (dict(delta=0.0), "delta=0.0"),
    (dict(delta=1.5), "delta=1.5"),
    (dict(delta=0.02), "1/n_train"),
    (dict(max_grad_norm=0.0), "max_grad_norm=0.0"),
    (dict(accountant="gdp"), "accountant='gdp'"),
])
def test_bad_arguments_name_the_parameter(kwargs, names):
    args = dict(n_train=100, batch_size=10, local_epochs=1, rounds=3, target_epsilon=4.0)
    args.update(kwargs)
    with pytest.raises(ConfigError) as info:
        plan(**args)
    assert names in str(info.value)


def test_unreachable_and_meaningless_targets_are_config_errors():
    with pytest.raises(ConfigError, match="target_epsilon=0.05 is out of reach.*Raise"):
        plan(1000, 16, 2, 5, target_epsilon=0.05)
    with pytest.raises(ConfigError, match="protects nothing"):
        plan(20, 20, 1, 1, target_epsilon=1e6)


def test_bad_ledger_input_is_rejected():
    ledger = PrivacyLedger()
    with pytest.raises(ConfigError, match="sample_rate=1.5"):
        ledger.record(1.0, 1.5, 10)
    with pytest.raises(ConfigError, match="steps=0"):
        ledger.record(1.0, 0.1, 0)
    with pytest.raises(ConfigError, match="accountant='prv'"):
        ledger.load_state_dict({"accountant": "prv", "history": []})
    with pytest.raises(ConfigError, match="history"):
        ledger.load_state_dict({"accountant": "rdp", "history": [[1.0, 0.1]]})
    with pytest.raises(ConfigError, match="accountant='gdp'"):
        PrivacyLedger("gdp")
    assert ledger.history == ()


def test_plan_from_config_uses_the_run_fields():
    cfg = RunConfig(dp="sample", batch_size=16, local_epochs=2, rounds=5, target_epsilon=8.0)
    p = plan_from_config(cfg, 1000)
    assert p.target_epsilon == 8.0 and p.epsilon <= 8.0 and p.delta == default_delta(1000)
    fixed = plan_from_config(cfg.replace(noise_multiplier=1.0, delta=1e-4), 1000)
    assert fixed.noise_multiplier == 1.0 and fixed.target_epsilon is None
    assert fixed.epsilon == pytest.approx(GOLDEN[0][1], rel=1e-3)
    with pytest.raises(ConfigError, match="dp='off'"):
        plan_from_config(RunConfig(), 1000)


# --------------------------------------------------------------------------- the CLI command

def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedclinic")
    privacy_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["privacy", "plan", *argv])


def test_plan_command_with_target(capsys):
    code = privacy_cli.run(_parse(["--n-train", "1000", "--rounds", "30"]))
    out = capsys.readouterr().out
    assert code == 0
    p = plan(1000, 16, 2, 30, target_epsilon=8.0)
    assert f"sigma = {p.noise_multiplier:.4g} gives epsilon = {p.epsilon:.4g} <= target 8" in out
    assert "0.01587" in out and " 126" in out and " 3780" in out
    assert f"{p.noise_std_per_coordinate:.4g}" in out
    curve = [line.split() for line in out.splitlines() if line.startswith("round ")]
    assert [int(c[1]) for c in curve][0] == 1 and int(curve[-1][1]) == 30 and len(curve) == 10
    values = [float(c[2]) for c in curve]
    assert values == sorted(values) and values[-1] == pytest.approx(p.epsilon, rel=1e-3)


def test_plan_command_with_fixed_sigma(capsys):
    argv = ["--n-train", "1000", "--noise-multiplier", "1.0", "--delta", "1e-4",
            "--accountant", "rdp"]
    assert privacy_cli.run(_parse(argv)) == 0
    out = capsys.readouterr().out
    assert "sigma = 1 gives epsilon = 2.315 (delta = 0.0001, 630 steps)" in out
    assert "<= target" not in out and "(given)" in out
    assert len([line for line in out.splitlines() if line.startswith("round ")]) == 5


def test_plan_command_reads_site_sizes_from_the_partition(capsys):
    from common.partitions.loader import load_federation

    argv = ["--num-samples", "120", "--sites", "2", "--batch-size", "8", "--noise-multiplier",
            "1.2"]
    assert privacy_cli.run(_parse(argv)) == 0
    out = capsys.readouterr().out
    sizes = [len(s.train) for s in load_federation(RunConfig(num_samples=120, sites=2)).sites]
    row = next(line for line in out.splitlines() if line.startswith("training samples n"))
    assert row.split()[-2:] == [str(n) for n in sizes]
    assert "site 0: sigma = 1.2" in out and "site 1: sigma = 1.2" in out


def test_a_site_smaller_than_one_batch_takes_every_sample_at_every_step():
    """batch 64 over 10 samples: q = 1, one step per epoch, accounted as Opacus would account a
    full-batch loader (no amplification by sampling)."""
    p = plan(10, 64, local_epochs=2, rounds=3, noise_multiplier=1.5, delta=1e-3)
    got = (p.batch_size, p.sample_rate, p.steps_per_round, p.expected_batch_size)
    assert got == (10, 1.0, 2, 10)
    acc = RDPAccountant()
    acc.history = [(1.5, 1.0, 6)]
    assert p.epsilon == pytest.approx(acc.get_epsilon(1e-3))


def test_plan_command_bad_input(capsys):
    with pytest.raises(ConfigError, match="--n-train='many'"):
        privacy_cli.run(_parse(["--n-train", "many"]))
    with pytest.raises(ConfigError, match="--sites"):
        privacy_cli.run(_parse(["--n-train", "100", "--sites", "3"]))
    with pytest.raises(SystemExit):
        _parse(["--target-epsilon", "1", "--noise-multiplier", "1"])
    capsys.readouterr()


def test_plan_command_help_gives_every_default(capsys):
    with pytest.raises(SystemExit):
        _parse(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--n-train", "--batch-size", "--local-epochs", "--rounds", "--target-epsilon",
                 "--noise-multiplier", "--delta", "--max-grad-norm", "--accountant", "--sites",
                 "--partition", "--dataset"):
        assert flag in text
    assert text.count("(default:") == 20   # every option but --help: 1 + 10 data + 9 others
