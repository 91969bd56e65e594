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

# Pending invites and their delivery through onbind.
KEYS.update(
    {
        # Ask remote identity servers too when resolving pending invites.
        "invite.resolution.recursive": ((bool,), True),
        # Minutes between two resolutions of pending invites by the stores.
        "invite.resolution.timer": ((int,), 1),
        # Resolve invites nobody claimed to invite.expiration.resolveTo.
        "invite.expiration.enabled": ((bool,), False),
        # Minutes after which a pending invite expires.
        "invite.expiration.after": ((int,), 60 * 24 * 7),
        # The mxid expired invites are delivered to (a bot that rejects them).
        "invite.expiration.resolveTo": ((str,), None),
        # CA bundle for TLS to homeservers (default: the system's, or
        # SSL_CERT_FILE / REQUESTS_CA_BUNDLE).
        "federation.caFile": ((str,), None),
    }
)

# Directory search and login through the homeserver's client API.
KEYS.update(
    {
        # [{name, value}]: internal base URL of the homeserver's client API
        # for each host name clients use (or matrix.domain).
        "dns.overwrite.homeserver.client": ((list,), []),
        # Leave the homeserver's own results out of directory searches.
        "directory.exclude.homeserver": ((bool,), False),
        # Do not match directory searches against 3PIDs.
        "directory.exclude.threepid": ((bool,), False),
        # [{regex, medium}]: user names matching regex are 3PIDs of medium.
        "auth.rewrite.user.rules": ((list,), []),
    }
)
