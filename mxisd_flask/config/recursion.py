"""The recursion section: DNS resolver, federation and forward servers."""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass
from typing import Any

from mxisd_flask.config.sections import Config, Network, _networks
from mxisd_flask.errors import ConfigError

DNS_PORT = 53
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Nameserver:
    address: str
    port: int


@dataclass(frozen=True)
class RecursionConfig:
    enabled: bool
    allowed_clients: tuple[Network, ...]
    timeout_s: float
    # Base URLs without a trailing slash, names already expanded.
    forward_servers: tuple[str, ...]
    # Empty: dnspython reads the system's resolver configuration.
    nameservers: tuple[Nameserver, ...]
    # Our own names, to never send a lookup to ourselves: the domain,
    # server.name, and (host, port) of server.publicUrl and the listener.
    own_domains: frozenset[str]
    own_endpoints: frozenset[tuple[str, int]]


def recursion_config(config: Config) -> RecursionConfig:
    """Build the section from the checked values; ConfigError on bad ones."""
    v = config.values
    timeout_s = float(v["lookup.recursive.timeout"])
    if not 0 < timeout_s <= 60:
        raise ConfigError("lookup.recursive.timeout: must be between 0 and 60 s")
    servers = _server_lists(v["matrix.identity.servers"])
    return RecursionConfig(
        enabled=v["lookup.recursive.enabled"],
        allowed_clients=_networks(
            v["lookup.recursive.allowedCidr"], "lookup.recursive.allowedCidr"
        ),
        timeout_s=timeout_s,
        forward_servers=_forward_servers(v["forward.servers"], servers),
        nameservers=_nameservers(v["dns.resolver.nameservers"]),
        own_domains=frozenset({config.domain.lower(), config.server.name.lower()}),
        own_endpoints=_own_endpoints(config),
    )


def endpoint(url: str) -> tuple[str, int] | None:
    """(lower-case host, port) of an http(s) URL; None when it is not one."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or port is None:
        return None
    return parts.hostname.lower(), port


def _own_endpoints(config: Config) -> frozenset[tuple[str, int]]:
    own = {(config.server.hostname.lower(), config.server.port)}
    public = endpoint(config.server.public_url)
    if public:
        own.add(public)
    if config.server.hostname in ("0.0.0.0", "::", ""):
        # Listening on every address: loopback reaches us too.
        own |= {(h, config.server.port) for h in ("127.0.0.1", "::1", "localhost")}
    return frozenset(own)


def _server_lists(raw: dict[Any, Any]) -> dict[str, tuple[str, ...]]:
    lists = {}
    for name, urls in raw.items():
        key = f"matrix.identity.servers.{name}"
        if not isinstance(urls, list):
            raise ConfigError(f"{key}: expected a list of base URLs")
        lists[str(name)] = tuple(
            _base_url(url, f"{key}[{i}]") for i, url in enumerate(urls)
        )
    return lists


def _forward_servers(
    raw: list[Any], lists: dict[str, tuple[str, ...]]
) -> tuple[str, ...]:
    found: list[str] = []
    for i, entry in enumerate(raw):
        key = f"forward.servers[{i}]"
        if not isinstance(entry, str):
            raise ConfigError(f"{key}: expected a base URL or a server list name")
        if entry in lists:
            found.extend(lists[entry])
        elif "://" in entry:
            found.append(_base_url(entry, key))
        else:
            raise ConfigError(
                f"{key}: {entry!r} is neither a URL nor a name under "
                "matrix.identity.servers"
            )
    return tuple(dict.fromkeys(found))


def _base_url(url: Any, key: str) -> str:
    if not isinstance(url, str) or endpoint(url) is None:
        raise ConfigError(f"{key}: expected an http(s) base URL, got {url!r}")
    parts = urllib.parse.urlsplit(url)
    if parts.query or parts.fragment:
        raise ConfigError(f"{key}: a base URL has no query or fragment")
    return url.rstrip("/")


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
