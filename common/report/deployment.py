"""What a deployed run's report says that a simulation's does not: which sites took part (by
name), the data they declared (their manifests: aggregate statistics only, `fedclinic site
validate`), what the global test set is (the operator's held-out set, or none: evaluation per
site), and the run's parts (started, interrupted, resumed, finished, with their times).

The server never sees site data, so nothing here comes from the server's own default config: a
deployed report is never titled after the synthetic dataset the config names by default.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class RunPart:
    """One start of the run's ServerApp: its first and last completed round and times (epoch s)."""

    started_at: float
    first_round: int
    last_round: int                   # the last round completed in this part (first - 1: none)
    updated_at: float                 # when that round completed (or the part started)
    resumed: bool = False
    ended_at: float | None = None     # None: the part was interrupted (the server went away)
    outcome: str = ""

    @property
    def seconds(self) -> float:
        return max(0.0, (self.ended_at or self.updated_at) - self.started_at)


@dataclass(frozen=True)
class Deployment:
    """A deployed run's sites, their declared data, its global test set and its parts."""

    sites: dict[str, str] = field(default_factory=dict)       # site number -> registered name
    declared: dict[str, dict] = field(default_factory=dict)   # site name -> its manifest
    global_test: str = ""             # the operator's held-out set (path, size); '' = none
    parts: tuple[RunPart, ...] = ()

    @property
    def wall_seconds(self) -> float:
        """The run's wall time over all its parts (the time between parts not counted)."""
        return sum(part.seconds for part in self.parts)

    def to_json(self) -> dict:
        return {"sites": self.sites, "declared_data": self.declared,
                "global_test": self.global_test or None,
                "parts": [asdict(p) for p in self.parts],
                "wall_seconds_all_parts": round(self.wall_seconds, 2)}


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _data_phrase(manifest: dict) -> str:
    """'medmnist, multiclass, 56 train / 8 val / 16 test, 28x28, labels 0: 11, 1: 13' from a
    manifest's aggregates (any layout: the keys it has)."""
    bits = [str(manifest.get("layout") or "data")]
    if manifest.get("task_kind"):
        bits.append(str(manifest["task_kind"]))
    counts = manifest.get("samples") or manifest.get("cases") or manifest.get("images")
    if isinstance(counts, dict):
        bits.append(" / ".join(f"{v} {k}" for k, v in counts.items()
                               if isinstance(v, (int, float))))
    elif isinstance(counts, (int, float)):
        bits.append(f"{counts:g} samples")
    sizes = manifest.get("image_sizes")
    if isinstance(sizes, dict) and sizes:
        bits.append(", ".join(list(map(str, sizes))[:3]))
    labels = manifest.get("labels")
    if isinstance(labels, dict) and isinstance(labels.get("train"), dict):
        labels = labels["train"]
    if isinstance(labels, dict) and labels and all(not isinstance(v, dict)
                                                   for v in labels.values()):
        bits.append("labels " + ", ".join(f"{k}: {v}" for k, v in list(labels.items())[:8]))
    if isinstance(manifest.get("modalities"), dict) and manifest["modalities"]:
        bits.append("/".join(map(str, manifest["modalities"])))
    if manifest.get("valid") is False:
        bits.append(f"{manifest.get('errors', '?')} validation error(s)")
    return ", ".join(b for b in bits if b)


def deployment_title(cfg, dep: Deployment) -> str:
    names = [dep.sites[k] for k in sorted(dep.sites, key=lambda s: (len(s), s))]
    layouts = sorted({str(m.get("layout")) for m in dep.declared.values() if m.get("layout")})
    data = f"{'/'.join(layouts)} data declared by the sites" if layouts else "the sites' own data"
    who = f" ({', '.join(names)})" if names else ""
    return f"# fedclinic deployed run: {len(names) or cfg.sites} sites{who}, {data}"


def deployment_lines(dep: Deployment) -> list[str]:
    """The paragraphs after the title: each site's declared data, the global test set, the parts."""
    lines = ["Deployed run: every site trained on its own data; the server saw model updates and "
             "the values each site's policy let leave, never the data.", ""]
    if dep.declared:
        lines += ["Data as each site declared it (its manifest from `fedclinic site validate`: "
                  "aggregate statistics only):", ""]
        lines += [f"- {name}: {_data_phrase(m)}" for name, m in sorted(dep.declared.items())]
        lines.append("")
    else:
        lines += ["No site manifest was given to the server (`fedclinic server --manifests`), "
                  "so the report does not describe the sites' data.", ""]
    if dep.global_test:
        lines += [f"Global test set: {dep.global_test}, held out by the operator "
                  f"(`fedclinic server --global-test`); the global model is scored on it each "
                  f"round.", ""]
    else:
        lines += ["No global test set: the server holds no data (`fedclinic server --global-test "
                  "PATH` gives it a held-out set). Evaluation is per site: each site scores the "
                  "global model on its own test split, as its policy allows.", ""]
    return lines + parts_section(dep.parts)


def parts_section(parts: tuple[RunPart, ...]) -> list[str]:
    """## Interruptions and resumes: each part with its times, when the run had more than one
    or its last part was interrupted."""
    if not parts:
        return []
    if len(parts) == 1 and parts[0].ended_at is not None:
        p = parts[0]
        return [f"Ran from {_when(p.started_at)} to {_when(p.ended_at)} without interruption.",
                ""]
    rows = []
    for i, p in enumerate(parts, 1):
        verb = "resumed" if p.resumed else "started"
        done = (f"rounds {p.first_round}..{p.last_round}" if p.last_round >= p.first_round
                else "no round completed")
        end = (f"finished {_when(p.ended_at)} ({p.outcome})" if p.ended_at is not None else
               f"**interrupted** after round {p.last_round} (last completed {_when(p.updated_at)})")
        rows.append(f"- part {i}: {verb} {_when(p.started_at)}, {done}; {end}; "
                    f"{p.seconds:.1f} s")
    total = sum(p.seconds for p in parts)
    return ["## Interruptions and resumes", "",
            f"The run was interrupted and resumed: {len(parts)} parts; the wall time "
            f"({total:.1f} s) adds up all parts, not the time between them.", "", *rows, ""]
