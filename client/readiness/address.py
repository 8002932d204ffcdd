"""The server address a site dials: ``HOST:PORT`` or ``[IPv6]:PORT``."""

from __future__ import annotations

import ipaddress
import re

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_ADDRESS = re.compile(r"\[(?P<ip6>[0-9A-Fa-f:.]+)\]:(?P<port6>\d+)"
                      r"|(?P<host>[^\s:\[\]]+):(?P<port>\d+)")


def parse_address(server: str) -> tuple[str, int]:
    """``'host:port'`` or ``'[v6-address]:port'`` -> (host, port)."""
    match = _ADDRESS.fullmatch(server.strip())
    port = int(match["port6"] or match["port"]) if match else 0
    if not match or not 1 <= port <= 65535:
        raise ValueError(f"server address {server!r}: expected HOST:PORT with a port 1-65535, "
                         "e.g. fl.consortium.example.org:8000 or [2001:db8::5]:8000")
    return match["ip6"] or match["host"], port


def ip_or_none(text: str) -> IPAddress | None:
    """``text`` as an IP address, or None for a host name."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
