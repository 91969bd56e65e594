"""Configuration keys of homeserver integration (issue #4)."""

from __future__ import annotations

from typing import Any

KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    # ---- Synapse authentication: check_credentials (services/auth.py) ----
    # Client addresses (CIDR) that may call
    # /_matrix-internal/identity/v1/check_credentials: the homeserver's.
    "auth.internal.allowedCidr": ((list,), ["127.0.0.1/32", "::1/128"]),
    # ---- end of Synapse authentication keys ----
}
