"""Which host names the viewer may bind to and answer for: loopback only, unless the user allows remote access."""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: str) -> bool:
    """Only names that cannot reach another machine: 127.0.0.0/8, ::1 and the localhost names."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> None:
    if not allow_remote and not is_loopback(host):
        raise ValueError(
            f"refusing to serve traces on {host!r}: it is not a loopback address, and traces hold prompts, images "
            "and user text; pass allow_remote=True (`--allow-remote` on the command line) to expose them"
        )
