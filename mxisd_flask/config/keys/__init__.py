"""Configuration keys of each feature, kept beside each other per feature.

Each module holds a ``KEYS`` dict of the same shape as the core SCHEMA
(dotted key -> (accepted types, default)); :data:`FEATURE_KEYS` is their union.
"""

from __future__ import annotations

from typing import Any

from mxisd_flask.config.keys import (
    exec_store,
    hash_index,
    homeserver,
    ldap,
    msisdn,
    recursion,
    rest,
    sql,
)

FEATURE_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {}
for _module in (ldap, sql, rest, exec_store, recursion, hash_index, msisdn, homeserver):
    FEATURE_KEYS.update(_module.KEYS)
