"""The one human line per round the server prints, and the sites it names as excluded."""

from __future__ import annotations

from typing import Any


def progress_line(line: dict, num_rounds: int) -> str:
    """One human line per round: accuracy and AUC, or Dice and HD95 for segmentation.

    Under DP sites may keep their test metrics (``withheld``) and training loss local
    (docs/what-leaves.md): the line then counts the sites that kept them and shows the largest
    epsilon a site reported instead of the loss; the global test numbers stay as they are."""
    parts = [f"[round {line['round']}/{num_rounds}]"]
    glob = line["global"]
    tests = [s["test"] for s in line["sites"].values() if s["test"]]
    seg = "dice" in glob or any("dice" in t for t in tests)
    key, short = ("dice", "dice") if seg else ("accuracy", "acc")
    if glob and seg:
        parts.append(f"global dice {glob['dice']:.3f} hd95 {_fmt(glob.get('hd95'))}")
    elif glob:
        parts.append(f"global acc {glob['accuracy']:.3f} auc {_fmt(glob.get('auc'))}")
    scored = [t for t in tests if key in t]
    if scored:
        accs = [t[key] for t in scored]
        noised = " (noised)" if any(t.get("withheld") == 0.0 for t in scored) else ""
        parts.append(f"sites {short}{noised} mean {sum(accs) / len(accs):.3f} "
                     f"min {min(accs):.3f}")
    kept = len(tests) - len(scored)
    if kept:
        parts.append(f"test metrics kept local at {kept} site{'s' if kept > 1 else ''}")
    parts += _training(line["sites"])
    if line["failures"]:
        parts.append("excluded: " + ", ".join(excluded_sites(line["failures"])))
    if line.get("skipped"):
        parts.append("not aggregated (quorum)")
    parts.append(f"{line['seconds']:.1f}s")
    return parts[0] + " " + " | ".join(parts[1:])


def _training(sites: dict[str, dict]) -> list[str]:
    """'train loss x' from the sites that sent it; else, under DP, 'epsilon max x'."""
    trains = [s["train"] for s in sites.values() if s["train"]]
    losses = [t["train_loss"] for t in trains if "train_loss" in t]
    if losses:
        return [f"train loss {sum(losses) / len(losses):.3f}"]
    spent = [t["epsilon"] for t in trains if "epsilon" in t]
    return [f"epsilon max {max(spent):.3f}"] if spent else []


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
