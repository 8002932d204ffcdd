"""What two simulated runs with the same config and seed agree on: every value of metrics.jsonl
except its timings (wall-clock seconds, which no seed fixes). The timings stay in the file (the
benchmarks read them); `without_timings` drops them before comparing."""

from __future__ import annotations

from typing import Any

# a round line's own timings (`server.round_log.RoundLog.round_line`) ...
ROUND_TIMING_KEYS = ("seconds", "timing")
# ... and those a site's train reply carries without DP (`client.release.train_metrics`)
SITE_TIMING_KEYS = ("train_seconds", "client_seconds")


def without_timings(line: dict[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl line without its timings: the part a same-seed rerun reproduces."""
    out = {k: v for k, v in line.items() if k not in ROUND_TIMING_KEYS}
    sites = out.get("sites")
    if isinstance(sites, dict):
        out["sites"] = {site: {phase: {k: v for k, v in (values or {}).items()
                                       if k not in SITE_TIMING_KEYS}
                               for phase, values in phases.items()}
                        for site, phases in sites.items()}
    return out
