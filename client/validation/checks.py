"""Check builders every data layout uses: bad files, class balance, one value for all images."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from client.check import Check

LISTED = 5                       # names shown per check before "... and N more"


def names(items: list[str], limit: int = LISTED) -> str:
    """The first ``limit`` items, then "... and N more"."""
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def histogram(counter: Counter) -> str:
    """``"CT: 3, MR: 1"``: most common first, ties by name."""
    return ", ".join(f"{k}: {n}" for k, n in sorted(counter.items(), key=lambda kv: (-kv[1],
                                                                                     kv[0])))


def relative(path: Path, root: Path) -> str:
    """``path`` relative to the data folder, or as given when it lies outside it."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def bad_files_check(bad: list[tuple[str, str]], total: int, strict: bool,
                    what: str = "file") -> Check:
    """The skipped files, each named with its reason (error under strict)."""
    if not bad:
        return Check(f"bad {what}s", "ok", f"none of {total} {what}(s)")
    status = "error" if strict else "warning"
    consequence = "strict: training would stop" if strict else "training skips them"
    listed = "; ".join(f"{name}: {reason}" for name, reason in bad[:LISTED])
    more = f"; ... and {len(bad) - LISTED} more" if len(bad) > LISTED else ""
    return Check(f"bad {what}s", status,
                 f"{len(bad)} of {total} {what}(s) unusable ({consequence}): {listed}{more}")


def class_balance(counts: dict[str, int], where: str) -> Check:
    """A warning for any class with fewer than 2 samples (it cannot both train and test)."""
    few = [f"{name!r}: {n}" for name, n in counts.items() if n < 2]
    summary = histogram(Counter(counts)) or "no samples"
    if few:
        return Check("class balance", "warning",
                     f"class(es) with fewer than 2 {where} samples ({', '.join(few)}); a class "
                     f"needs samples to both train and test on; all: {summary}")
    return Check("class balance", "ok", summary)


def uniform_check(name: str, counts: Counter, mixed: str) -> Check:
    """ok with the histogram when all images share one value, else a warning: ``mixed`` with
    ``{n}`` (how many values) and ``{histogram}`` filled in."""
    if len(counts) > 1:
        return Check(name, "warning", mixed.format(n=len(counts), histogram=histogram(counts)))
    return Check(name, "ok", histogram(counts) or "no images")
