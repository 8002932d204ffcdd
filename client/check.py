"""One check's verdict, the type `fedclinic site validate` and `fedclinic site doctor` report in.

``error``: the site cannot join or train until it is fixed; ``warning``: it can, but something
is skipped or mistrusted; ``ok``. Each command renders checks its own way.
"""

from __future__ import annotations

from dataclasses import dataclass

STATUSES = ("ok", "warning", "error")


@dataclass(frozen=True)
class Check:
    name: str
    status: str                  # one of STATUSES
    detail: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"check {self.name!r}: status {self.status!r}; expected one of "
                             f"{', '.join(STATUSES)}")
