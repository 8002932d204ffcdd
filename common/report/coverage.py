"""Which released values the run's guarantee covers: every field the sites' replies actually
carried (read from the run's history), looked up in the "what leaves a site" table
(`common.releases`).

A field is covered when it is public (no private data, or only the training-set size, which the
table declares public), or when its private part is protected by DP-SGD or by Gaussian noise
charged to the site's ledger. An exact value that depends on private data (what dp='off' sends),
a value the table says stays local, or a field the table does not list, is not covered; the
report names each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common import releases
from common.releases import PLACEHOLDERS, Release

COVERING = (releases.DP_SGD, releases.CHARGED, releases.PUBLIC)
MESSAGES = {"train": releases.TRAIN, "test": releases.EVALUATE}   # history key -> message type
WEIGHTS = "arrays (the model weights)"


@dataclass(frozen=True)
class CoveredRelease:
    """One field the sites sent in a run, and how the guarantee covers it."""

    message: str          # "train" | "evaluate"
    field: str            # the metric key (or the weights)
    private: str          # "yes" | "no" | "size" ("unlisted" when the table has no row)
    protection: str       # a `common.releases` protection, or "not in the table"
    covered: bool
    sites: int            # how many sites sent it at least once


def _mode(dp: str) -> str:
    return releases.DP if dp == "sample" else releases.NO_DP


def _pattern(field: str) -> re.Pattern[str]:
    pattern = re.escape(field)
    for placeholder in PLACEHOLDERS:
        pattern = pattern.replace(re.escape(placeholder), r"\d+")
    return re.compile(pattern + r"\Z")


def table_row(message: str, field: str, dp: str) -> Release | None:
    """The table's row for ``field`` of a ``message`` reply under run mode ``dp``, if any."""
    when = (releases.ALWAYS, _mode(dp))
    for row in releases.RELEASES:
        if row.message == message and row.when in when and (
                row.field == field or _pattern(row.field).match(field)):
            return row
    return None


def observed_fields(history: list[dict]) -> dict[tuple[str, str], set[str]]:
    """(message, field) -> the sites whose replies carried it, over every round of the run."""
    seen: dict[tuple[str, str], set[str]] = {}
    for line in history:
        for site, replies in line.get("sites", {}).items():
            for key, message in MESSAGES.items():
                for field in replies.get(key) or {}:
                    seen.setdefault((message, field), set()).add(site)
    return seen


def _families(seen: dict[tuple[str, str], set[str]], dp: str
              ) -> dict[tuple[str, str], set[str]]:
    """One entry per row for the fields of a row with a bin or second class placeholder
    (``val_hist_0_<b>``, ``val_cm_<c>_<d>``: tens to thousands of keys), else per field."""
    out: dict[tuple[str, str], set[str]] = {}
    for (message, field), sites in seen.items():
        row = table_row(message, field, dp)
        family = row is not None and (releases.BIN in row.field or releases.CLASS2 in row.field)
        out.setdefault((message, row.field if family else field), set()).update(sites)
    return out


def release_coverage(history: list[dict], dp: str) -> tuple[CoveredRelease, ...]:
    """Every field the run's replies carried, in table order (unlisted ones last), plus the
    model weights of every train reply."""
    seen = _families(observed_fields(history), dp)
    trained = {s for (message, _), sites in seen.items() if message == releases.TRAIN
               for s in sites}
    if trained:
        seen[(releases.TRAIN, WEIGHTS)] = trained
    out = []
    for (message, field), sites in seen.items():
        row = table_row(message, field, dp)
        if row is None:
            out.append(CoveredRelease(message, field, "unlisted", "not in the table", False,
                                      len(sites)))
        else:
            out.append(CoveredRelease(message, field, row.private, row.protection,
                                      row.protection in COVERING, len(sites)))
    order = {(r.message, r.field): i for i, r in enumerate(releases.RELEASES)}

    def rank(c: CoveredRelease) -> tuple[int, str]:
        row = table_row(c.message, c.field, dp)
        return (order.get((row.message, row.field), len(order)) if row else len(order), c.field)

    return tuple(sorted(out, key=rank))
