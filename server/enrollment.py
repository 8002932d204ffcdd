"""Which sites may join: the server's `site-keys/` folder applied to Flower's node registry.

Only the operator's side enrols a site: `fedclinic certs add-site` puts its public key in
`site-keys/`, and `fedclinic server` registers every key there when it starts (through the
loopback SuperLink; a site cannot register itself: Flower refuses Fleet-side registration under
`--enable-supernode-auth`). The folder is the truth at start: a registered key whose file is gone
is revoked. While the server runs, `fedclinic certs revoke-site` (the operator's certificate)
revokes a site at once: Flower marks the node unregistered, refuses the site's next request
(its signed requests no longer match a node), and leaves it out of the next round. Flower keeps
a revoked key refused for good (a key is stored once), so a site that must come back makes a
new key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.config import ConfigError
from server.control import (UNREGISTERED, list_site_nodes, public_key_bytes, register_site_key,
                            unregister_node)


@dataclass(frozen=True)
class SiteKey:
    name: str          # the file's stem: the site's name
    path: Path
    key: bytes         # the public key as Flower stores it


def read_site_keys(folder: Path) -> list[SiteKey]:
    """Every <name>.pub in `folder`; ConfigError naming the file that is not a public key."""
    files = sorted(Path(folder).glob("*.pub"))
    if not files:
        raise ConfigError(f"--site-keys {folder}: no <site>.pub files; each hospital's public "
                          f"key goes there (`fedclinic certs init` or `fedclinic certs add-site`)")
    keys = []
    for path in files:
        try:
            keys.append(SiteKey(path.stem, path, public_key_bytes(path)))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: not an OpenSSH EC public key ({exc})") from None
    return keys


def sync_sites(control, folder: Path, echo: Callable[[str], None]) -> dict[str, int]:
    """Register the keys in `folder` that the SuperLink does not know, revoke the registered
    ones whose file is gone; returns {site name: node id} of the sites that may join."""
    keys = read_site_keys(folder)
    nodes = list_site_nodes(control)
    by_key = {bytes(node.public_key): node for node in nodes}
    allowed: dict[str, int] = {}
    for site in keys:
        node = by_key.get(site.key)
        if node is None:
            try:
                allowed[site.name] = register_site_key(control, site.path, site.name)
            except Exception as exc:  # noqa: BLE001 - Flower's refusal, said with the file
                raise ConfigError(f"{site.path}: the SuperLink refused this site key "
                                  f"({exc})") from None
            echo(f"fedclinic server: registered site {site.name} (node {allowed[site.name]})")
        elif node.status == UNREGISTERED:
            echo(f"fedclinic server: site {site.name} stays refused: its key was revoked "
                 f"(remove {site.path}; to let it back, the hospital makes a new key and you "
                 f"register it with `certs add-site --force`)")
        else:
            allowed[site.name] = int(node.node_id)
            echo(f"fedclinic server: site {site.name} is registered (node {node.node_id})")
    wanted = {site.key for site in keys}
    for node in nodes:
        if bytes(node.public_key) not in wanted and node.status != UNREGISTERED:
            unregister_node(control, int(node.node_id))
            echo(f"fedclinic server: revoked site {node.name or node.node_id} (node "
                 f"{node.node_id}): its key is no longer in {folder}")
    return allowed


def revoke_site(control, public_key_file: Path) -> int:
    """Revoke the site whose public key is in `public_key_file` on the running server; returns
    its node id. ConfigError if the server does not know the key or revoked it before."""
    key = public_key_bytes(public_key_file)
    nodes = [n for n in list_site_nodes(control) if bytes(n.public_key) == key]
    live = [n for n in nodes if n.status != UNREGISTERED]
    if not live:
        said = "revoked it before" if nodes else "does not know this key"
        raise ConfigError(f"{public_key_file}: the server {said}; nothing to revoke")
    for node in live:
        unregister_node(control, int(node.node_id))
    return int(live[0].node_id)
