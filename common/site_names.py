"""The one naming scheme for sites: site number N (`fedclinic site --site-id N`, the row "N" of
every report, simulated site N) is called `site-N` everywhere a name is needed: its key pair from
`fedclinic certs init` (`sites/site-N/site-N.key`, `site-keys/site-N.pub`, the name the server
registers and prints), its `fedclinic demo-data` file (`site-N.npz`), the compose service and
its data folder, the examples in README.md and deploy/GUIDE.md. Numbers start at 0, as in
simulation.

A consortium may give its hospitals other names (`charite`): then the operator's table of names
and numbers (deploy/GUIDE.md, A2) is the mapping, and the server names each site by its key
file's name.
"""

from __future__ import annotations

import re

PREFIX = "site-"
_NAME = re.compile(r"^site-(\d+)$")


def site_name(site_id: int) -> str:
    """site number -> its name: 0 -> 'site-0'."""
    return f"{PREFIX}{int(site_id)}"


def site_number(name: str) -> int | None:
    """'site-2' -> 2; None for a name outside the scheme (e.g. 'charite')."""
    found = _NAME.match(name)
    return int(found[1]) if found else None


def default_names(count: int) -> list[str]:
    """The names of sites 0..count-1."""
    return [site_name(i) for i in range(count)]
