"""Progress while it trains: bars on a terminal (a fake one here), one line per event with the
epochs done and the time left elsewhere (CI, logs), for the baselines, the federation's rounds
and a trade-off sweep's cells."""

from __future__ import annotations

import io
import re

import pytest

import simulations.baselines as baselines
from common.config import RunConfig
from common.datasets import load_dataset
from common.partitions.federation import build_federation
from simulations.progress import BarProgress, Progress, RoundBar, Task, clock, progress_for

TINY = RunConfig(num_samples=120, sites=2, rounds=2, local_epochs=2, model="cnn", width=4,
                 batch_size=16)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def fed():
    import torch

    torch.set_num_threads(1)
    return build_federation(load_dataset(TINY), TINY)


def test_task_counts_and_estimates_time_left(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("simulations.progress._now", lambda: now[0])
    task = Progress().task("baseline pooled", 8)
    assert task.status() == "epochs 0/8, time left unknown yet"
    now[0] = 110.0
    task.advance(2)
    assert task.status() == "epochs 2/8, 0:00:30 left"       # 5 s an epoch, 6 epochs to go
    task.drop(4)                                              # stopped early: 4 never run
    assert (task.done, task.total) == (2, 4)
    task.advance(10)
    assert task.done == 4 and task.status().endswith("0:00:00 left")
    assert clock(3725) == "1:02:05"


def test_not_a_terminal_gives_no_bars_and_one_line_per_round(fed):
    assert isinstance(progress_for(io.StringIO()), Progress)
    assert not progress_for(io.StringIO()).bars
    lines: list[str] = []
    baselines.run_pooled(TINY, fed, lines.append)
    rounds = [ln for ln in lines if ln.startswith("[baseline pooled] round")]
    assert len(rounds) == TINY.rounds and len(lines) == TINY.rounds + 1       # + the done line
    assert re.search(r"round 1/2: .*; epochs 2/4, \d:\d\d:\d\d left\)$", rounds[0])
    assert re.search(r"round 2/2: .*; epochs 4/4, 0:00:00 left\)$", rounds[1])
    lines.clear()
    baselines.run_local(TINY, fed, lines.append)                 # one task over both sites
    rounds = [ln for ln in lines if " round " in ln]
    assert [re.search(r"epochs (\d+)/8", ln).group(1) for ln in rounds] == ["2", "4", "6", "8"]


def test_a_terminal_gets_live_bars_and_the_lines_above_them(fed):
    screen = FakeTTY()
    bars = progress_for(screen)
    assert isinstance(bars, BarProgress) and bars.bars
    lines: list[str] = []
    with bars:
        rounds = RoundBar(bars, TINY.rounds)
        rounds.log_metrics({}, 1)
        baselines.run_pooled(TINY, fed, lines.append, bars)
        rounds.log_metrics({}, 2)
        rounds.close()
    shown = screen.getvalue()
    assert "\x1b[" in shown                                    # drawn as a terminal is
    assert "baseline pooled" in shown and "4/4" in shown and "epochs" in shown
    assert "federation" in shown and "2/2" in shown and "rounds" in shown
    assert "left" in shown
    # the event lines are the same as off a terminal
    assert [ln.split(":")[0] for ln in lines[:2]] == ["[baseline pooled] round 1/2",
                                                     "[baseline pooled] round 2/2"]


def test_bars_are_reentrant_and_a_stopped_task_completes():
    screen = FakeTTY()
    bars = progress_for(screen, tty=True)
    with bars:
        with bars:                                     # a sweep's cell inside the sweep
            task = bars.task("baseline local", 10)
            task.advance(3)
        assert bars.rich.live.is_started
        task.drop(7)
        task.finish()
        mark = bars.mark()
        bars.task("a finished cell's bar", 2)
        bars.forget(mark)
        assert bars.mark() == mark == 1
    assert not bars.rich.live.is_started
    state = bars.rich.tasks[0]
    assert state.completed == state.total == 3
    assert isinstance(task, Task)


def test_sweep_cells_show_progress(tmp_path, monkeypatch):
    """A sweep on a terminal: a 'tradeoff cells' bar; off one, the cell lines carry the ETA."""
    import simulations.tradeoff.cells as cells
    from simulations.tradeoff.spec import SweepSpec, parse_epsilons, parse_seeds
    from simulations.tradeoff.sweep import run_tradeoff
    from tests.test_tradeoff import FakeSimulate

    monkeypatch.setattr(cells, "simulate", FakeSimulate())
    base = RunConfig(model="cnn", width=8, num_samples=200, sites=2, rounds=1,
                     local_epochs=1, output_dir=str(tmp_path))
    spec = SweepSpec(base, parse_epsilons("inf,4"), parse_seeds("1", 0), "sweep")
    screen = FakeTTY()
    lines: list[str] = []
    run_tradeoff(spec, echo=lines.append, bars=progress_for(screen))
    assert "tradeoff cells" in screen.getvalue() and "2/2" in screen.getvalue()
    done = [ln for ln in lines if ": done in " in ln]
    assert len(done) == 2 and "ETA" in done[0] and "1 more cell(s)" in done[0]
