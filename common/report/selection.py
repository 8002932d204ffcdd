"""How a model was chosen on validation data, and its operating point, as the report states it.

One `Selection` for the federation (the round of best_model.pt) and one for each baseline (its
round-equivalent: every ``local_epochs`` epochs); the test splits chose nothing: they only score
the chosen model at its operating point (``at_operating_point``: the global test split;
``sites_at_operating_point``: each site's own test split, when the simulator scored them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.operating_point import OperatingPoint

Metrics = dict[str, float]

CRITERIA = {"val_loss": "sample-weighted validation loss (lower is better)",
            "val_auc": "validation AUC from the sites' score histograms (higher is better)",
            "val_balanced_accuracy": "validation balanced accuracy from the sites' confusion "
                                     "matrices (higher is better)"}
LOWER_IS_BETTER = ("val_loss",)


@dataclass(frozen=True)
class Selection:
    """The chosen model and operating point of one method."""

    criterion: str                     # a CRITERIA key, or "" when nothing was selected
    chosen: int                        # the round (round-equivalent) of the chosen model
    last: int                          # the last round trained
    value: float | None = None         # its validation score
    scores: dict[int, float] = field(default_factory=dict)   # round -> validation score
    skipped: str = ""                  # why no model was selected (the last one is used)
    stopped: str = ""                  # early stopping: why training ended before its rounds
    noised: bool = False               # the validation statistics carried DP noise
    operating_point: OperatingPoint | None = None
    at_operating_point: Metrics = field(default_factory=dict)      # global test split
    sites_at_operating_point: dict[str, Metrics] = field(default_factory=dict)

    @property
    def selected(self) -> bool:
        return bool(self.criterion)

    def describe(self) -> str:
        """One sentence: which model, chosen how (or why none was)."""
        if not self.selected:
            return f"the last model (round {self.last}): no selection, {self.skipped}"
        noise = " (noised statistics)" if self.noised else ""
        return (f"round {self.chosen} of {self.last} by {CRITERIA[self.criterion]}{noise}: "
                f"{self.value:.4f}")

    def to_json(self) -> dict:
        out: dict = {"criterion": self.criterion, "chosen_round": self.chosen,
                     "last_round": self.last, "value": self.value,
                     "scores": {str(r): v for r, v in self.scores.items()}}
        if self.skipped:
            out["skipped"] = self.skipped
        if self.stopped:
            out["stopped"] = self.stopped
        if self.noised:
            out["noised"] = True
        if self.operating_point is not None:
            out["operating_point"] = self.operating_point.to_json()
        if self.at_operating_point:
            out["global"] = self.at_operating_point
        if self.sites_at_operating_point:
            out["sites"] = self.sites_at_operating_point
        return out
