"""The one human line per round the server prints, and the sites it names as excluded."""

from __future__ import annotations

from typing import Any


def progress_line(line: dict, num_rounds: int) -> str:
    """One human line per round: accuracy and AUC, or Dice and HD95 for segmentation."""
    parts = [f"[round {line['round']}/{num_rounds}]"]
    glob = line["global"]
    tests = [s["test"] for s in line["sites"].values() if s["test"]]
    seg = "dice" in glob or any("dice" in t for t in tests)
    key, short = ("dice", "dice") if seg else ("accuracy", "acc")
    if glob and seg:
        parts.append(f"global dice {glob['dice']:.3f} hd95 {_fmt(glob.get('hd95'))}")
    elif glob:
        parts.append(f"global acc {glob['accuracy']:.3f} auc {_fmt(glob.get('auc'))}")
    if tests:
        accs = [t[key] for t in tests]
        parts.append(f"sites {short} mean {sum(accs) / len(accs):.3f} min {min(accs):.3f}")
    losses = [s["train"]["train_loss"] for s in line["sites"].values() if s["train"]]
    if losses:
        parts.append(f"train loss {sum(losses) / len(losses):.3f}")
    if line["failures"]:
        parts.append("excluded: " + ", ".join(excluded_sites(line["failures"])))
    if line.get("skipped"):
        parts.append("not aggregated (quorum)")
    parts.append(f"{line['seconds']:.1f}s")
    return parts[0] + " " + " | ".join(parts[1:])


def excluded_sites(failures: dict[str, str]) -> list[str]:
    """'site 2' / 'node 7' once each, from failure keys like 'site 2 (node 7) (train)'."""
    names = []
    for key in failures:
        name = key.split(" (")[0]
        if name not in names:
            names.append(name)
    return names


def _fmt(value: Any) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"
