"""`fedclinic tradeoff`: how much utility each privacy budget costs, federated vs local vs pooled.

Sweeps the DP-SGD budget epsilon (``inf`` = no DP) over several seeds. Every (epsilon, seed) cell
is one full `simulate()` run (federation plus the local and pooled baselines, trained under the
same DP budget), kept in ``<output-dir>/<sweep-name>/eps<E>-seed<S>/``. The sweep folder gets
``tradeoff.csv`` (one row per cell, model and scope), ``tradeoff.md`` (mean ± std over seeds) and
``tradeoff.png`` (utility against epsilon). A stopped sweep restarted with the same arguments
reuses the cells that finished; ``sweep.json`` holds the arguments so a restart with other ones is
refused instead of mixing two experiments in one table.

Utility is ROC-AUC (accuracy where AUC is undefined) for classification and Dice for
``--task segmentation``, whose table also shows HD95.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from common import rundir  # noqa: E402
from common.config import ConfigError, RunConfig  # noqa: E402
from common.seg_data import check_task_model  # noqa: E402
from simulations.simulate import simulate  # noqa: E402

DEFAULT_EPSILONS = "inf,16,8,4,2,1"
DEFAULT_SEEDS = "3"
SWEPT = ("dp", "target_epsilon", "noise_multiplier")   # set per cell, not by flags
MODELS = ("federated", "local", "pooled")
METRICS = ("accuracy", "auc", "balanced_accuracy", "dice", "hd95")   # empty where n/a
CSV_COLUMNS = ("epsilon", "seed", "model", "scope", *METRICS, "epsilon_spent", "mia_auc",
               "mia_tpr_at_1pct_fpr")
SWEEP_FILE = "sweep.json"
CSV_FILE = "tradeoff.csv"
TABLE_FILE = "tradeoff.md"
PLOT_FILE = "tradeoff.png"
_EPS_LO = 0.01          # RunConfig.target_epsilon's range
_EPS_HI = 1e6
MAX_SEEDS = 1000        # a sweep of more seeds is a typo, not a plan
_SEED_MAX = 2**31 - 1    # RunConfig.seed's range


# ----------------------------------------------------------------------------- sweep definition

def parse_epsilons(text: str) -> tuple[float, ...]:
    """``"inf,16,8"`` -> (inf, 16.0, 8.0); ``inf`` means no DP. Rejects <= 0, junk, duplicates."""
    values: list[float] = []
    for raw in (part.strip() for part in str(text).split(",")):
        if raw.lower() in ("inf", "infinity"):
            value = math.inf
        else:
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and _EPS_LO <= value <= _EPS_HI):
                raise ConfigError(f"epsilons={text!r}: {raw!r} is not a privacy budget; expected "
                                  f"'inf' (no DP) or a number {_EPS_LO} <= epsilon <= {_EPS_HI:g},"
                                  f" comma-separated, e.g. {DEFAULT_EPSILONS!r}")
        if value in values:
            raise ConfigError(f"epsilons={text!r}: {raw!r} is listed twice; give each budget once")
        values.append(value)
    return tuple(values)


def parse_seeds(text: str, first: int = 0) -> tuple[int, ...]:
    """``"3"`` -> 3 seeds from ``first`` on; ``"0,5,9"`` -> exactly those seeds."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if not numbers or any(n < 0 for n in numbers):
        raise ConfigError(f"seeds={text!r}: expected a number of seeds N >= 1 (seeds --seed .. "
                          f"--seed+N-1) or a comma-separated list of seeds >= 0, e.g. '3' or "
                          f"'0,5,9'")
    if len(parts) == 1:
        if not 1 <= numbers[0] <= MAX_SEEDS:
            raise ConfigError(f"seeds={text!r}: expected 1 to {MAX_SEEDS} seeds")
        if first + numbers[0] - 1 > _SEED_MAX:
            raise ConfigError(f"seeds={text!r}: seeds {first}..{first + numbers[0] - 1} go past "
                              f"the largest seed {_SEED_MAX}; give fewer seeds or a lower --seed")
        return tuple(range(first, first + numbers[0]))
    if len(set(numbers)) != len(numbers):
        raise ConfigError(f"seeds={text!r}: a seed is listed twice; give each seed once")
    return tuple(numbers)


def epsilon_label(epsilon: float) -> str:
    """'inf', '4', '0.5': used in folder names, the CSV and sweep.json."""
    return "inf" if math.isinf(epsilon) else f"{epsilon:.10g}"


def default_sweep_name(cfg: RunConfig) -> str:
    data = Path(cfg.data_path).stem if cfg.dataset == "medmnist" else cfg.dataset
    name = f"tradeoff-{data}-{cfg.partition}-{cfg.strategy}-{cfg.model}"
    return name.replace(":", "").replace("+", "_").replace("/", "_")


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: base run options, the budgets and seeds crossed, and the sweep folder's name."""

    base: RunConfig
    epsilons: tuple[float, ...]
    seeds: tuple[int, ...]
    name: str

    def __post_init__(self) -> None:
        if not self.name or self.name in (".", "..") or any(c in self.name for c in "/\\:+"):
            raise ConfigError(f"sweep_name={self.name!r}: expected a plain folder name (no '/', "
                              f"'\\', ':', '+')")
        if not self.epsilons or not self.seeds:
            raise ConfigError("a sweep needs at least one epsilon and one seed")
        check_task_model(self.base)        # e.g. a classifier with task=segmentation
        for cell in self.cells():          # validates every cell's config before any work
            self.config(*cell)

    @property
    def directory(self) -> Path:
        return Path(self.base.output_dir) / self.name

    def cells(self) -> list[tuple[float, int]]:
        return [(eps, seed) for eps in self.epsilons for seed in self.seeds]

    def config(self, epsilon: float, seed: int) -> RunConfig:
        """The cell's run: DP off for inf, else DP-SGD calibrated to spend ``epsilon``."""
        common = dict(seed=seed, noise_multiplier=0.0, output_dir=str(self.directory))
        if math.isinf(epsilon):
            return self.base.replace(dp="off", **common)
        return self.base.replace(dp="sample", target_epsilon=float(epsilon), **common)

    def cell_dir(self, epsilon: float, seed: int) -> Path:
        return self.directory / cell_name(epsilon, seed)

    def record(self) -> dict[str, Any]:
        """What sweep.json stores; equal records mean the same experiment."""
        options = {k: v for k, v in self.base.to_dict().items()
                   if k not in (*SWEPT, "seed", "output_dir")}
        return {"epsilons": [epsilon_label(e) for e in self.epsilons], "seeds": list(self.seeds),
                "options": options}


def cell_name(epsilon: float, seed: int) -> str:
    return f"eps{epsilon_label(epsilon)}-seed{seed}"


def check_sweep_record(spec: SweepSpec) -> None:
    """Write sweep.json on the first start; on a restart, refuse arguments that differ."""
    path = spec.directory / SWEEP_FILE
    new = spec.record()
    if not path.exists():
        rundir.write_json(path, new)
        return
    try:
        old = _read_record(path)
    except ValueError as exc:
        raise ConfigError(f"{path}: unreadable sweep record ({exc}); delete the sweep folder or "
                          f"use another --sweep-name") from None
    diffs = _differences(old, new)
    if diffs:
        raise ConfigError(f"{path}: this sweep was started with other arguments: "
                          f"{'; '.join(diffs)}. Rerun with the recorded arguments to resume it, "
                          f"or use another --sweep-name for a new sweep")


def _read_record(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(data, dict) or not {"epsilons", "seeds", "options"} <= set(data):
        raise ValueError("expected keys epsilons, seeds, options")
    return data


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    for key in ("epsilons", "seeds"):
        if old.get(key) != new[key]:
            out.append(f"{key}: recorded {old.get(key)!r}, now {new[key]!r}")
    old_opts, new_opts = old.get("options", {}), new["options"]
    for key in sorted(set(old_opts) | set(new_opts)):
        if old_opts.get(key) != new_opts.get(key):
            out.append(f"{key}: recorded {old_opts.get(key, '(absent)')!r}, now "
                       f"{new_opts.get(key, '(absent)')!r}")
    return out


# ----------------------------------------------------------------------------- cells

def completed_summary(spec: SweepSpec, epsilon: float, seed: int) -> dict | None:
    """The cell's summary.json when its run finished (every model it should have), else None.

    A finished run made with another configuration is an error: its numbers belong to a
    different experiment."""
    path = spec.cell_dir(epsilon, seed) / rundir.SUMMARY
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    expected = spec.config(epsilon, seed)
    needed = ("federated", *expected.baseline_list) + (("privacy",) if expected.dp != "off" else ())
    if not isinstance(summary, dict) or any(key not in summary for key in needed):
        return None
    ran = {k: v for k, v in summary.get("config", {}).items() if k != "output_dir"}
    want = {k: v for k, v in expected.to_dict().items() if k != "output_dir"}
    if ran != want:
        diff = sorted(k for k in set(ran) | set(want) if ran.get(k) != want.get(k))
        raise ConfigError(f"{path}: a finished run with other settings ({', '.join(diff)}) is in "
                          f"this sweep's cell folder; move it away or use another --sweep-name")
    return summary


def run_cell(spec: SweepSpec, epsilon: float, seed: int, echo: Callable[[str], None],
             verbose: bool = False) -> dict:
    """Run one cell with simulate(); an unfinished earlier attempt's folder is replaced."""
    where = spec.cell_dir(epsilon, seed)
    if where.exists():
        echo(f"[tradeoff] removing the unfinished run in {where}")
        shutil.rmtree(where)
    outcome = simulate(spec.config(epsilon, seed), echo=echo, verbose=verbose,
                       run_name=cell_name(epsilon, seed))
    if Path(outcome.run_dir).resolve() != where.resolve():
        raise RuntimeError(f"simulate wrote cell eps={epsilon_label(epsilon)} seed={seed} to "
                           f"{outcome.run_dir}, expected {where}")
    return outcome.summary


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if not math.isnan(value) else None


def _spent(summary: dict, model: str, epsilon: float) -> dict[str, float | None]:
    """Epsilon actually spent, keyed by scope ('global' = the largest over sites)."""
    if math.isinf(epsilon):
        return {"global": math.inf}
    if model == "federated":
        privacy = summary.get("privacy", {})
        sites = {f"site-{s}": _finite(v.get("epsilon"))
                 for s, v in privacy.get("sites", {}).items()}
        return {"global": _finite(privacy.get("max_epsilon")), **sites}
    privacy = summary.get(model, {}).get("privacy", {})
    if "epsilon" in privacy:                                     # pooled: one model
        return {"global": _finite(privacy["epsilon"])}
    sites = {f"site-{s}": _finite(v.get("epsilon")) for s, v in privacy.items()}
    found = [v for v in sites.values() if v is not None]
    return {"global": max(found) if found else None, **sites}


def _audit(summary: dict, model: str, scope: str) -> dict:
    """Loss-threshold membership-inference result of the model at this scope, or {}."""
    audit = summary.get("audit", {}).get(model, {})
    part = audit.get("pooled", {}) if scope == "global" else \
        audit.get("sites", {}).get(scope.removeprefix("site-"), {})
    return part.get("loss-threshold", {}) if isinstance(part, dict) else {}


def summary_rows(summary: dict, epsilon: float, seed: int) -> list[dict[str, Any]]:
    """One CSV row per model and scope (global test, then each site's own test split)."""
    rows = []
    for model in (m for m in MODELS if m in summary):
        entry, spent = summary[model], _spent(summary, model, epsilon)
        scopes = [("global", entry.get("global") or {})]
        scopes += [(f"site-{s}", m or {}) for s, m in
                   sorted(entry.get("sites", {}).items(), key=lambda kv: int(kv[0]))]
        for scope, metrics in scopes:
            audit = _audit(summary, model, scope)
            rows.append({"epsilon": epsilon, "seed": seed, "model": model, "scope": scope,
                         **{k: _finite(metrics.get(k)) for k in METRICS},
                         "epsilon_spent": spent.get(scope, spent["global"]),
                         "mia_auc": _finite(audit.get("auc")),
                         "mia_tpr_at_1pct_fpr": _finite(audit.get("tpr_at_1pct_fpr"))})
    return rows


# ----------------------------------------------------------------------------- outputs

def csv_text(rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        cells = []
        for key in CSV_COLUMNS:
            value = row[key]
            if key == "epsilon":
                cells.append(epsilon_label(value))
            elif value is None:
                cells.append("")
            elif isinstance(value, float):
                cells.append("inf" if math.isinf(value) else repr(value))
            else:
                cells.append(str(value))
        writer.writerow(cells)
    return buf.getvalue()


def mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    """Mean and sample std of the finite values (std 0 for one value); NaN when there are none."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan, 0
    if all(math.isinf(v) for v in vals):
        return math.inf, 0.0, len(vals)
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)


def _pick(rows: list[dict], epsilon: float, model: str, scope: str, key: str) -> list:
    return [r[key] for r in rows if r["epsilon"] == epsilon and r["model"] == model
            and r["scope"] == scope]


def worst_site(rows: list[dict], epsilon: float, key: str = "auc") -> list[float | None]:
    """Per seed, the lowest federated value over sites (sites without one are ignored)."""
    out = []
    for seed in sorted({r["seed"] for r in rows if r["epsilon"] == epsilon}):
        vals = [r[key] for r in rows if r["epsilon"] == epsilon and r["seed"] == seed
                and r["model"] == "federated" and r["scope"].startswith("site-")
                and r[key] is not None]
        out.append(min(vals) if vals else None)
    return out


def _fmt(values: Iterable[float | None]) -> str:
    mean, std, n = mean_std(values)
    if n == 0:
        return "n/a"
    if math.isinf(mean):
        return "inf"
    return f"{mean:.3f}" if n == 1 else f"{mean:.3f} ± {std:.3f}"


def _order(epsilons: Iterable[float]) -> list[float]:
    """No DP first, then from the loosest to the tightest budget."""
    return sorted(set(epsilons), key=lambda e: -e)


def table_metrics(spec: SweepSpec) -> tuple[tuple[str, str], tuple[str, str]]:
    """(utility, second metric) as (key, column label): Dice and HD95, or AUC and accuracy."""
    if spec.base.task == "segmentation":
        return ("dice", "Dice"), ("hd95", "HD95")
    return ("auc", "AUC"), ("accuracy", "acc")


def markdown_table(rows: list[dict], spec: SweepSpec) -> str:
    """Mean ± std over seeds per epsilon, with a paragraph saying what each column holds."""
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    sites = sorted({r["scope"] for r in rows if r["model"] == "federated"
                    and r["scope"].startswith("site-")}, key=lambda s: int(s[5:]))
    mia = any(r["mia_auc"] is not None for r in rows)
    (key, label), (key2, label2) = table_metrics(spec)
    head = ["epsilon budget", "epsilon spent"]
    head += [f"{m} {name}" for m in models for name in (label, label2)]
    head += [f"federated worst-site {label}"] + [f"federated {s} {label}" for s in sites]
    head += ["MIA AUC (federated)", "MIA TPR@1%FPR (federated)"] if mia else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for eps in _order(r["epsilon"] for r in rows):
        cells = ["inf (no DP)" if math.isinf(eps) else epsilon_label(eps),
                 _fmt(_pick(rows, eps, "federated", "global", "epsilon_spent"))]
        for m in models:
            cells += [_fmt(_pick(rows, eps, m, "global", key)),
                      _fmt(_pick(rows, eps, m, "global", key2))]
        cells.append(_fmt(worst_site(rows, eps, key)))
        cells += [_fmt(_pick(rows, eps, "federated", s, key)) for s in sites]
        if mia:
            cells += [_fmt(_pick(rows, eps, "federated", "global", k))
                      for k in ("mia_auc", "mia_tpr_at_1pct_fpr")]
        lines.append("| " + " | ".join(cells) + " |")
    return _table_intro(spec, models, mia) + "\n".join(lines) + "\n"


def _table_intro(spec: SweepSpec, models: list[str], mia: bool) -> str:
    cfg = spec.base
    seeds = ", ".join(map(str, spec.seeds))
    baselines = " and ".join(m for m in models if m != "federated") or "no"
    if cfg.task == "segmentation":
        metrics = ("`<model> Dice` / `<model> HD95` are the mean Dice and 95th-percentile "
                   "Hausdorff distance (pixels/voxels) of the predicted masks on the global test "
                   "set")
        worst = "Dice"
    else:
        metrics = "`<model> AUC` / `<model> acc` are ROC-AUC and accuracy on the global test set"
        worst = "AUC"
    text = (f"# Privacy-utility trade-off: {cfg.dataset}, {cfg.sites} sites, partition "
            f"`{cfg.partition}`\n\nModel `{cfg.model}` (width {cfg.width}), strategy "
            f"`{cfg.strategy}`, {cfg.rounds} round(s) x {cfg.local_epochs} local epoch(s), "
            f"{cfg.accountant.upper()} accountant, seeds {seeds}.\n\n"
            f"Each cell is the mean ± sample standard deviation over the seeds. `epsilon budget` "
            f"is the whole-run DP-SGD budget per site (inf = trained without DP); `epsilon spent` "
            f"is the largest epsilon any federated site actually spent. {metrics} of the "
            f"federated model and of the {baselines} baseline(s), trained under the same budget "
            f"(local: mean of the sites' own models). `federated worst-site {worst}` is, per "
            f"seed, the lowest {worst} of the federated model over the sites' own test splits; "
            f"`federated site-i {worst}` is that {worst} for each site.")
    if mia:
        text += (" `MIA AUC` and `MIA TPR@1%FPR` are the loss-threshold membership-inference "
                 "attack's ROC-AUC (0.5 = no leak) and true-positive rate at 1% false positives "
                 "against the federated model, over all sites' members and non-members.")
    return text + "\n\n"


def _utility_metric(rows: list[dict]) -> str:
    """Plot Dice for segmentation; else AUC when every global value has one, else accuracy (AUC
    is undefined on one class)."""
    glob = [r for r in rows if r["scope"] == "global"]
    if glob and any(r.get("dice") is not None for r in glob):
        return "dice"
    return "auc" if glob and all(r["auc"] is not None for r in glob) else "accuracy"


def _x_positions(epsilons: list[float]) -> dict[float, float]:
    finite = [e for e in epsilons if not math.isinf(e)]
    inf_x = max(finite) * 4 if finite else 1.0
    return {e: inf_x if math.isinf(e) else e for e in epsilons}


def plot_tradeoff(rows: list[dict], spec: SweepSpec, path: Path) -> None:
    """Utility against epsilon (log axis, no DP at the right), error bars = std over seeds."""
    metric = _utility_metric(rows)
    label = {"auc": "ROC-AUC", "dice": "Dice"}.get(metric, "accuracy")
    epsilons = sorted({r["epsilon"] for r in rows})
    xpos = _x_positions(epsilons)
    xs = [xpos[e] for e in epsilons]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = {"federated": "k-o", "local": "r-s", "pooled": "g-^"}
    for model in (m for m in MODELS if any(r["model"] == m for r in rows)):
        stats = [mean_std(_pick(rows, e, model, "global", metric)) for e in epsilons]
        ax.errorbar(xs, [s[0] for s in stats], yerr=[0 if math.isnan(s[1]) else s[1]
                                                     for s in stats],
                    fmt=styles[model], capsize=3, label=f"{model}, global test")
    worst = [mean_std(worst_site(rows, e, metric)) for e in epsilons]
    ax.errorbar(xs, [s[0] for s in worst], yerr=[0 if math.isnan(s[1]) else s[1] for s in worst],
                fmt="k--", alpha=0.6, capsize=3, label="federated, worst site")
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(xs)
    ax.set_xticklabels(["inf (no DP)" if math.isinf(e) else epsilon_label(e) for e in epsilons])
    ax.set_xlabel("privacy budget epsilon per site (log scale)")
    ax.set_ylabel(label)
    ax.set_title(f"{label} vs privacy: {spec.base.dataset} / {spec.base.partition} / "
                 f"{spec.base.strategy} / {spec.base.model}, {len(spec.seeds)} seed(s)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class TradeoffOutcome:
    sweep_dir: Path
    rows: list[dict]
    ran: int           # cells simulated by this call
    skipped: int       # cells read back from an earlier call


def write_outputs(rows: list[dict], spec: SweepSpec) -> None:
    rundir.atomic_write_bytes(spec.directory / CSV_FILE, csv_text(rows).encode())
    rundir.atomic_write_bytes(spec.directory / TABLE_FILE, markdown_table(rows, spec).encode())
    plot_tradeoff(rows, spec, spec.directory / PLOT_FILE)


# ----------------------------------------------------------------------------- the sweep

def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_tradeoff(spec: SweepSpec, echo: Callable[[str], None] = print,
                 verbose: bool = False) -> TradeoffOutcome:
    """Run the missing cells, read back the finished ones, write csv/md/png after each cell."""
    spec.directory.mkdir(parents=True, exist_ok=True)
    check_sweep_record(spec)
    cells = spec.cells()
    done = {cell: completed_summary(spec, *cell) for cell in cells}
    todo = sum(summary is None for summary in done.values())
    start, durations, rows_by_cell = time.monotonic(), [], {}
    for index, (eps, seed) in enumerate(cells, 1):
        tag = f"[tradeoff] cell {index}/{len(cells)} eps={epsilon_label(eps)} seed={seed}"
        summary = done[(eps, seed)]
        if summary is not None:
            echo(f"{tag}: skipped, finished earlier ({spec.cell_dir(eps, seed)})")
        else:
            echo(f"{tag}: start (elapsed {_clock(time.monotonic() - start)}, "
                 f"ETA {_eta(durations, todo - len(durations))})")
            began = time.monotonic()
            summary = run_cell(spec, eps, seed, echo, verbose)
            durations.append(time.monotonic() - began)
            echo(f"{tag}: done in {_clock(durations[-1])} (elapsed "
                 f"{_clock(time.monotonic() - start)}, ETA {_eta(durations, todo - len(durations))}"
                 f" for {todo - len(durations)} more cell(s))")
        rows_by_cell[(eps, seed)] = summary_rows(summary, eps, seed)
        if summary is not done[(eps, seed)]:
            write_outputs([r for c in cells if c in rows_by_cell for r in rows_by_cell[c]], spec)
    rows = [r for c in cells for r in rows_by_cell[c]]
    write_outputs(rows, spec)
    echo(f"[tradeoff] {len(cells)} cells ({len(durations)} run, {len(cells) - len(durations)} "
         f"reused) in {_clock(time.monotonic() - start)}: {spec.directory / TABLE_FILE}, "
         f"{spec.directory / CSV_FILE}, {spec.directory / PLOT_FILE}")
    return TradeoffOutcome(spec.directory, rows, len(durations), len(cells) - len(durations))


def _eta(durations: list[float], remaining: int) -> str:
    if remaining <= 0:
        return _clock(0)
    if not durations:
        return "unknown until a cell finishes"
    return _clock(statistics.fmean(durations) * remaining)
