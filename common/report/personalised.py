"""The report's "personalised" column (`--personalize`): each site's personal model on its own
test split, and "did federation help this site?" taken over the best federated option
(the global model or the site's personalised one) against the site's local model."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.report.comparison import federation_helped

Metrics = dict[str, float]

METHODS = {
    "finetune": "the chosen global model fine-tuned at each site on its train split, the epoch "
                "(0 = none) kept by the site's own validation loss",
    "local-norm": "the global model's shared weights with the site's own normalisation layers "
                  "(FedBN: never sent, never aggregated)",
}


@dataclass(frozen=True)
class PersonalisedScores:
    """Each site's personal model scored on its own test split (by the simulator, which plays
    every site), and how each was chosen (finetune: the epoch per site)."""

    method: str                                   # "finetune" or "local-norm"
    sites: dict[str, Metrics]
    chosen: dict[str, dict] = field(default_factory=dict)     # site -> `Finetuned.to_json`
    note: str = ""
    # site -> its personal model's metrics at its own operating point (chosen on its val split)
    at_operating_point: dict[str, Metrics] = field(default_factory=dict)

    def describe(self) -> str:
        return METHODS.get(self.method, self.method) + (f". {self.note}" if self.note else "")

    def to_json(self) -> dict:
        out: dict = {"method": self.method, "sites": self.sites, "global": {},
                     "how": self.describe()}
        if self.at_operating_point:
            out["at_operating_point"] = self.at_operating_point
        return {**out, "chosen": self.chosen} if self.chosen else out


def best_option_helped(federated: dict[str, Metrics], personalised: dict[str, Metrics],
                       local: dict[str, Metrics]) -> dict[str, dict]:
    """`federation_helped` of whichever of the federated and the personalised model does
    better against the site's local model (on the test split, as the rest of the table; the
    models themselves were chosen on validation data), with ``option`` naming it."""
    plain = federation_helped(federated, local)
    mine = federation_helped(personalised, local)
    out = {}
    for site, verdict in plain.items():
        other = mine.get(site)
        best, option = verdict, "federated"
        if other is not None and other["delta"] is not None and (
                verdict["delta"] is None or other["delta"] > verdict["delta"]):
            best, option = other, "personalised"
        out[site] = {**best, "option": option}
    return out


def personalised_note(scores: PersonalisedScores | None) -> str:
    """The paragraph under the per-site table saying what the personalised column holds."""
    if scores is None:
        return ""
    return (f"Personalised ({scores.method}): {scores.describe()}; scored by the simulator on "
            f"each site's test split. 'Did federation help' compares the better of the "
            f"federated and the personalised model with the site's local model.")
