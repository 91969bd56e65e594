"""Configuration keys of recursive lookups: federation, forwarding (issue #3)."""

from __future__ import annotations

from typing import Any

# mxisd's defaults: clients on loopback and private networks may recurse.
DEFAULT_ALLOWED_CLIENTS = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "::1/128",
    "fc00::/7",
]

KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    # Ask other identity servers when no local store knows a 3PID.
    "lookup.recursive.enabled": ((bool,), True),
    # Clients (after server.trustedProxies) whose lookups may recurse.
    "lookup.recursive.allowedCidr": ((list,), DEFAULT_ALLOWED_CLIENTS),
    # Seconds one call to a remote identity server may take.
    "lookup.recursive.timeout": ((int, float), 3),
    # Identity servers asked after DNS federation, in order: base URLs or
    # names of lists under matrix.identity.servers.
    "forward.servers": ((list,), []),
    # Named lists of identity server base URLs.
    "matrix.identity.servers": ((dict,), {"matrix-org": ["https://matrix.org"]}),
    # DNS servers asked for SRV and address records ("host" or "host:port",
    # IPv6 as "[addr]:port"); empty: the system resolver (/etc/resolv.conf).
    "dns.resolver.nameservers": ((list,), []),
}
