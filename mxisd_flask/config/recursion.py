"""The recursion section: DNS resolver, federation and forward servers."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from mxisd_flask.config.sections import Config
from mxisd_flask.errors import ConfigError

DNS_PORT = 53


@dataclass(frozen=True)
class Nameserver:
    address: str
    port: int


@dataclass(frozen=True)
class RecursionConfig:
    # Empty: dnspython reads the system's resolver configuration.
    nameservers: tuple[Nameserver, ...]


def recursion_config(config: Config) -> RecursionConfig:
    """Build the section from the checked values; ConfigError on bad ones."""
    v = config.values
    return RecursionConfig(
        nameservers=_nameservers(v["dns.resolver.nameservers"]),
    )


def _nameservers(raw: list[Any]) -> tuple[Nameserver, ...]:
    key = "dns.resolver.nameservers"
    return tuple(_nameserver(entry, f"{key}[{i}]") for i, entry in enumerate(raw))


def _nameserver(entry: Any, key: str) -> Nameserver:
    """ "IP", "IP:PORT" or "[IPv6]:PORT": dnspython wants addresses, not names."""
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigError(f"{key}: expected an address such as 127.0.0.1:53")
    text = entry.strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ConfigError(f"{key}: expected [IPv6]:PORT, got {entry!r}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ConfigError(f"{key}: {host!r} is not an IP address") from exc
    if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ConfigError(f"{key}: bad port in {entry!r}")
    return Nameserver(str(address), int(port_text) if port_text else DNS_PORT)
