"""Configuration keys of the REST store (issue #3).

mxisd's names and defaults (its docs/stores/rest.md); an endpoint is a path
below ``rest.host`` or a whole URL, and an empty string turns it off.
``rest.timeout``, the per-capability ``enabled`` switches and the listing
endpoint (for v2 hashed lookups, which mxisd's API predates) are ours.
"""

from __future__ import annotations

from typing import Any

_API = "/_mxisd/backend/api/v1"

KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "rest.enabled": ((bool,), False),
    "rest.host": ((str,), None),
    # Seconds before a call to the backend is abandoned (the store then fails).
    "rest.timeout": ((int, float), 5),
    "rest.endpoints.auth": ((str,), f"{_API}/auth/login"),
    "rest.endpoints.directory": ((str,), f"{_API}/directory/user/search"),
    "rest.endpoints.identity.single": ((str,), f"{_API}/identity/single"),
    "rest.endpoints.identity.bulk": ((str,), f"{_API}/identity/bulk"),
    # Off unless set: mxisd's backends do not answer it.
    "rest.endpoints.identity.listing": ((str,), ""),
    "rest.endpoints.profile.displayName": ((str,), f"{_API}/profile/displayName"),
    "rest.endpoints.profile.threepids": ((str,), f"{_API}/profile/threepids"),
    "rest.endpoints.profile.roles": ((str,), f"{_API}/profile/roles"),
    # false turns one capability off while the others stay on.
    "rest.identity.enabled": ((bool,), True),
    "rest.listing.enabled": ((bool,), True),
    "rest.auth.enabled": ((bool,), True),
    "rest.directory.enabled": ((bool,), True),
    "rest.profile.enabled": ((bool,), True),
}
