"""`RunRecord`: everything one run's report says, typed; `to_json` is summary.json.

The server fills the federated part (history, privacy, early stop) for a deployed run; the
simulator adds what only it knows (baselines, partition heterogeneity, site sizes, the audit,
overlays, and under DP each site's score of the final model, which the sites keep local) with
`dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from common.config import RunConfig
from common.datasets.base import TaskInfo
from common.report.comparison import federation_helped, is_segmentation
from common.report.coverage import CoveredRelease, release_coverage
from common.report.deployment import Deployment
from common.report.personalised import PersonalisedScores, best_option_helped
from common.report.privacy import ClientPrivacy, SamplePrivacy, SpentPrivacy
from common.report.selection import Selection
from common.validation_stats import without_validation

Metrics = dict[str, float]     # one model on one test split: accuracy, auc, dice, hd95, loss ...


@dataclass(frozen=True)
class Scores:
    """One model scored on each site's own test split and on the global test split."""

    sites: dict[str, Metrics]            # site id -> metrics
    overall: Metrics                     # the global test split ("global" in summary.json)
    sites_note: str = ""                 # who scored the sites, when not the sites themselves

    def to_json(self) -> dict:
        out = {"global": self.overall, "sites": self.sites}
        return {**out, "sites_note": self.sites_note} if self.sites_note else out


@dataclass(frozen=True)
class BaselineScores(Scores):
    """A baseline (local or pooled) and, trained under DP-SGD, what it spent."""

    note: str = ""                                  # how ``overall`` was formed, if not plainly
    site_privacy: dict[str, SpentPrivacy] = field(default_factory=dict)   # local: per site
    privacy: SpentPrivacy | None = None                                   # pooled: one model
    selection: Selection | None = None           # pooled: its round chosen on validation data
    site_selection: dict[str, Selection] = field(default_factory=dict)    # local: per site
    at_operating_point: Metrics = field(default_factory=dict)   # global test (local: mean)
    sites_at_operating_point: dict[str, Metrics] = field(default_factory=dict)

    def to_json(self) -> dict:
        out: dict = {"sites": self.sites, "global": self.overall}
        if self.note:
            out["global_note"] = self.note
        if self.selection is not None:
            out["selection"] = self.selection.to_json()
        if self.site_selection:
            out["selection"] = {"sites": {s: sel.to_json()
                                          for s, sel in self.site_selection.items()}}
        if self.site_privacy:
            out["privacy"] = {site: asdict(p) for site, p in self.site_privacy.items()}
        elif self.privacy is not None:
            out["privacy"] = asdict(self.privacy)
        return out


@dataclass(frozen=True)
class SiteSize:
    train: int
    val: int
    test: int


@dataclass(frozen=True)
class SkippedFile:
    """A data file left out of the run (unreadable, wrong shape, ...) and why."""

    file: str
    reason: str


@dataclass(frozen=True)
class RunRecord:
    """One run: config, per-round history, and every outcome the report shows."""

    config: RunConfig
    history: list[dict]                  # metrics.jsonl lines, round 0 (initial model) first
    wall_seconds: float
    heterogeneity: float | None = None   # label skew of the partition; None: a deployed run
    site_sizes: dict[str, SiteSize] = field(default_factory=dict)   # simulated sites only
    baselines: dict[str, BaselineScores] = field(default_factory=dict)   # "local", "pooled"
    privacy: SamplePrivacy | ClientPrivacy | None = None                  # None: dp='off'
    stopped_early: str = ""              # why the run ended before its last round
    run_dir: str = ""
    task: TaskInfo | None = None
    skipped_files: tuple[SkippedFile, ...] = ()
    audit: dict | None = None            # `common.mia.audit` of the final global model
    audit_note: str = ""
    overlays: dict[str, list[str]] = field(default_factory=dict)   # site -> PNGs (run-relative)
    site_scores: dict[str, Metrics] = field(default_factory=dict)  # simulator-scored, see below
    site_scores_note: str = ""           # how ``site_scores`` were computed
    selection: Selection | None = None   # the chosen global model and its operating point
    personalised: PersonalisedScores | None = None   # --personalize: each site's own model
    deployment: Deployment | None = None  # a deployed run: its sites, their data, its parts

    @property
    def rounds(self) -> int:
        return self.history[-1]["round"]

    @property
    def chosen_line(self) -> dict:
        """The metrics.jsonl line of the chosen global model: the round model selection chose
        on validation data (`selection`), else the last round."""
        if self.selection is not None and self.selection.selected:
            for line in self.history:
                if line["round"] == self.selection.chosen:
                    return line
        return self.history[-1]

    @property
    def federated(self) -> Scores:
        """The chosen global model (`chosen_line`) on each site's test split and on the global
        test: as each site reported it in that round, or, when the simulator scored the sites
        itself (under DP the sites keep their test metrics local), ``site_scores``."""
        chosen = self.chosen_line
        if self.site_scores:
            return Scores(sites=dict(self.site_scores), overall=chosen["global"],
                          sites_note=self.site_scores_note)
        return Scores(sites={s: without_validation(v["test"])
                             for s, v in chosen["sites"].items()},
                      overall=chosen["global"])

    @property
    def released(self) -> tuple[CoveredRelease, ...]:
        """Every field the sites' replies carried, and whether the guarantee covers it."""
        return release_coverage(self.history, self.config.dp)

    @property
    def is_segmentation(self) -> bool:
        fed = self.federated
        return is_segmentation([fed.overall, *fed.sites.values()])

    def federation_helped(self) -> dict[str, dict] | None:
        """`comparison.federation_helped` against the local baseline; None without one. With
        personalisation: of the better of the federated and the personalised model
        (`personalised.best_option_helped`)."""
        if "local" not in self.baselines:
            return None
        local = self.baselines["local"].sites
        if self.personalised is not None:
            return best_option_helped(self.federated.sites, self.personalised.sites, local)
        return federation_helped(self.federated.sites, local)

    def operating_points(self) -> dict[str, dict]:
        """Per model (federated, local, pooled, personalised): the metrics at its operating point
        on the global test split (``global``; local: the mean of the local models;
        personalised: none) and on each site's test split (``sites``, when scored), and how the
        point was chosen."""
        out: dict[str, dict] = {}
        sel = self.selection
        if sel is not None and sel.operating_point is not None:
            out["federated"] = {"global": sel.at_operating_point,
                                "sites": sel.sites_at_operating_point,
                                "rule": sel.operating_point.describe()}
        for name, scores in self.baselines.items():
            if not (scores.at_operating_point or scores.sites_at_operating_point):
                continue
            chosen = scores.selection or next(iter(scores.site_selection.values()), None)
            point = chosen.operating_point if chosen is not None else None
            rule = ("each site's own model at its own operating point, chosen on its own "
                    "validation split" if scores.site_selection else
                    point.describe() if point is not None else "")
            out[name] = {"global": scores.at_operating_point,
                         "sites": scores.sites_at_operating_point, "rule": rule}
        mine = self.personalised
        if mine is not None and mine.at_operating_point:
            out["personalised"] = {"global": {}, "sites": mine.at_operating_point,
                                   "rule": "each site's personal model at its own operating "
                                           "point, chosen on its own validation split"}
        return out

    def to_json(self) -> dict:
        """summary.json: the record as plain JSON values (optional parts only when present)."""
        out = {"config": self.config.to_dict(), "rounds": self.rounds,
               "wall_seconds": round(self.wall_seconds, 2), "heterogeneity": self.heterogeneity,
               "site_counts": {site: asdict(size) for site, size in self.site_sizes.items()},
               "initial": {"global": self.history[0]["global"]},
               "federated": self.federated.to_json(),
               **{name: scores.to_json() for name, scores in self.baselines.items()}}
        if self.personalised is not None:
            out["personalised"] = self.personalised.to_json()
        if self.deployment is not None:
            out["deployment"] = self.deployment.to_json()
        helped = self.federation_helped()
        if helped is not None:
            out["federation_helped"] = helped
        return {**out, **self._optional_json()}

    def _optional_json(self) -> dict:
        audit = None if self.audit is None else {
            "federated": self.audit, **({"note": self.audit_note} if self.audit_note else {})}
        optional = {"run_dir": self.run_dir,
                    "skipped_files": [asdict(s) for s in self.skipped_files],
                    "task": None if self.task is None else asdict(self.task),
                    "stopped_early": self.stopped_early,
                    "privacy": None if self.privacy is None else self.privacy.to_json(),
                    "audit": audit, "overlays": self.overlays,
                    "selection": None if self.selection is None else self.selection.to_json(),
                    "operating_point": self.operating_points(),
                    "released": [asdict(c) for c in self.released]}
        return {key: value for key, value in optional.items() if value}
