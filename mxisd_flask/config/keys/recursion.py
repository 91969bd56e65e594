"""Configuration keys of recursive lookups: federation, forwarding (issue #3)."""

from __future__ import annotations

from typing import Any

KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    # DNS servers asked for SRV and address records ("host" or "host:port",
    # IPv6 as "[addr]:port"); empty: the system resolver (/etc/resolv.conf).
    "dns.resolver.nameservers": ((list,), []),
}
