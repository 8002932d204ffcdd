"""The ``partition`` setting's grammar: ``dirichlet:0.5+shift`` and friends, parsed and checked.

`common.config` validates every RunConfig's ``partition`` with `parse_partition`, so this module
takes ConfigError from there at call time (importing it at load time would be circular).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LABEL_SKEWS = ("iid", "dirichlet", "pathological", "by-tag", "lesion")
QUANTITY_LAWS = ("powerlaw", "lognormal")

PARTITION_HELP = (
    "terms joined by '+': one of iid | dirichlet:ALPHA | pathological:K | by-tag:KEYWORD (DICOM: "
    "one site per value of a tag, e.g. by-tag:Manufacturer) | lesion:ALPHA (segmentation: "
    "Dirichlet skew over lesion size), optionally quantity[:powerlaw|lognormal] (with iid only) "
    "and shift, e.g. dirichlet:0.5+shift"
)


@dataclass(frozen=True)
class PartitionSpec:
    """Parsed form of a partition string such as ``dirichlet:0.5+shift``."""

    label: str = "iid"            # iid | dirichlet | pathological
    alpha: float = 0.0            # Dirichlet concentration (label == "dirichlet")
    classes_per_site: int = 0     # K (label == "pathological")
    quantity: str = ""            # "" | powerlaw | lognormal: skewed site sizes
    shift: bool = False           # per-site acquisition (scanner) profiles
    tag: str = ""                 # DICOM keyword whose values become the sites (label == "by-tag")


def parse_partition(spec: str) -> PartitionSpec:
    """Parse ``iid``, ``dirichlet:0.5``, ``pathological:2``, ``quantity:lognormal``, ``+shift``."""
    from common.config import ConfigError

    out: dict[str, Any] = {}
    terms = [t.strip() for t in spec.split("+") if t.strip()]
    if not terms:
        raise ConfigError(f"partition={spec!r}: empty; expected {PARTITION_HELP}")
    for term in terms:
        name, _, arg = term.partition(":")
        if name in LABEL_SKEWS:
            if "label" in out:
                raise ConfigError(f"partition={spec!r}: two label-skew terms; use one of "
                                  f"{', '.join(LABEL_SKEWS)}")
            out["label"] = name
            out.update(_label_argument(spec, term, name, arg))
        elif name == "quantity":
            law = arg or "powerlaw"
            if law not in QUANTITY_LAWS:
                raise ConfigError(f"partition={spec!r}: quantity law {law!r} unknown; "
                                  f"expected one of {', '.join(QUANTITY_LAWS)}")
            out["quantity"] = law
        elif name == "shift" and not arg:
            out["shift"] = True
        else:
            raise ConfigError(f"partition={spec!r}: unknown term {term!r}; expected {PARTITION_HELP}")
    parsed = PartitionSpec(**out)
    if parsed.quantity and parsed.label != "iid":
        raise ConfigError(f"partition={spec!r}: quantity skew combines with iid labels (and shift) "
                          f"only, not with {parsed.label}")
    return parsed


def _label_argument(spec: str, term: str, name: str, arg: str) -> dict[str, Any]:
    """The PartitionSpec fields set by label-skew term ``name:arg``."""
    from common.config import ConfigError

    if name in ("dirichlet", "lesion"):
        return {"alpha": _number(spec, term, arg, float, lo=1e-3)}
    if name == "by-tag":
        if not arg.isidentifier():
            raise ConfigError(f"partition={spec!r}: 'by-tag' needs a DICOM keyword, "
                              f"e.g. by-tag:Manufacturer or by-tag:InstitutionName")
        return {"tag": arg}
    if name == "pathological":
        return {"classes_per_site": _number(spec, term, arg, int, lo=1)}
    if arg:
        raise ConfigError(f"partition={spec!r}: 'iid' takes no argument")
    return {}


def _number(spec: str, term: str, arg: str, kind: type, lo: float) -> Any:
    from common.config import ConfigError

    try:
        value = kind(arg)
    except ValueError:
        raise ConfigError(f"partition={spec!r}: {term!r} needs a {kind.__name__} argument, "
                          f"e.g. {term.split(':')[0]}:{'0.5' if kind is float else '2'}") from None
    if value < lo:
        raise ConfigError(f"partition={spec!r}: {term!r} must be >= {lo}")
    return value
