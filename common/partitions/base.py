"""What every partition scheme shares: the minimum site size, the random streams, the spec's text."""

from __future__ import annotations

import numpy as np

from common.config import ConfigError
from common.partition_spec import PartitionSpec

MIN_SITE_SAMPLES = 3          # one each for train, val and test
PERMUTE, PARTITIONER, SIZES, SPLIT, SHIFT = range(5)   # independent random streams


def stream(seed: int, *keys: int) -> int:
    """A 32-bit seed for one independent random stream derived from the run seed."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def spec_text(spec: PartitionSpec) -> str:
    """The partition string that parses back to ``spec``, e.g. ``dirichlet:0.5+shift``."""
    terms = [spec.label]
    if spec.label in ("dirichlet", "lesion"):
        terms[0] += f":{spec.alpha:g}"
    elif spec.label == "pathological":
        terms[0] += f":{spec.classes_per_site}"
    elif spec.label == "by-tag":
        terms[0] += f":{spec.tag}"
    if spec.quantity:
        terms.append(f"quantity:{spec.quantity}")
    if spec.shift:
        terms.append("shift")
    return "+".join(terms)


def check_site_sizes(parts: list[np.ndarray], spec: PartitionSpec, text: str) -> None:
    """ConfigError naming the first site left with fewer than MIN_SITE_SAMPLES samples."""
    hint = {"dirichlet": "a larger alpha, ", "lesion": "a larger alpha, ",
            "pathological": "more classes per site, "}
    for site, idx in enumerate(parts):
        if len(idx) < MIN_SITE_SAMPLES:
            noun = "sample" if len(idx) == 1 else "samples"
            raise ConfigError(f"partition={text!r} leaves site {site} with {len(idx)} {noun} "
                              f"(need >= {MIN_SITE_SAMPLES}); use fewer sites, "
                              f"{hint.get(spec.label, '')}or more data")
