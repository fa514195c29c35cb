"""Which host names the viewer may bind to and answer for: loopback only, unless the user allows remote access.

Binding to loopback keeps other machines out; checking every request's `Host` header keeps out web pages too. A
page on attacker.example can re-point its own name at 127.0.0.1 (DNS rebinding) and then read the viewer as
"same origin"; its requests still say `Host: attacker.example`, so the viewer answers only requests addressed to
a loopback name, the host the user allowed with `--allow-remote`, or (served on every interface) an IP address,
which no page can re-point.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})  # every interface
_DNS_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
_PORT = re.compile(r"\d{0,5}")


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


def host_header_name(header: str) -> str | None:
    """The host in a `Host` header (`name`, `name:port`, `[v6]`, `[v6]:port`), lowercased; None if malformed."""
    value = header.strip().lower()
    if value.startswith("["):
        name, bracket, port = value[1:].partition("]")
        if not bracket or not _is_ip(name) or ":" not in name:
            return None
    else:
        name, colon, digits = value.partition(":")
        port = colon + digits
        name = name.removesuffix(".")  # `localhost.` is the same name, fully qualified
        if not _DNS_NAME.fullmatch(name):
            return None
    if port and not (port.startswith(":") and _PORT.fullmatch(port[1:])):
        return None
    return name


@dataclass(frozen=True)
class HostHeaderCheck:
    """Which `Host` headers a viewer answers: loopback names always, plus what the user allowed."""

    names: frozenset[str] = frozenset()  # further host names (lowercase, IPv6 without brackets)
    any_ip_address: bool = False  # served on every interface with allow_remote: any IP literal

    @classmethod
    def for_server(cls, host: str, allow_remote: bool, allowed_hosts: Iterable[str] = ()) -> HostHeaderCheck:
        """For a viewer bound to `host`: its own name (when remote access is allowed) and `allowed_hosts`."""
        names = set()
        for name in [host, *allowed_hosts]:
            check_host(name, allow_remote)
            name = name.strip().strip("[]").lower().removesuffix(".")
            if name not in WILDCARD_HOSTS:
                names.add(name)
        return cls(frozenset(names), any_ip_address=allow_remote and host.strip().strip("[]") in WILDCARD_HOSTS)

    def allows(self, headers: list[str]) -> bool:
        """Whether a request with these `Host` headers (exactly one is valid) is addressed to this viewer."""
        if len(headers) != 1:
            return False
        name = host_header_name(headers[0])
        if name is None:
            return False
        return is_loopback(name) or name in self.names or (self.any_ip_address and _is_ip(name))

    def describe(self) -> str:
        others = sorted(f"[{n}]" if ":" in n else n for n in self.names if not is_loopback(n))
        accepted = ["localhost or a loopback address", *others]
        if self.any_ip_address:
            accepted.append("an IP address of this machine")
        return ", ".join(accepted[:-1]) + (" or " if len(accepted) > 1 else "") + accepted[-1]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
