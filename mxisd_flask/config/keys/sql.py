"""Configuration keys of the SQL and synapseSql stores (issue #3).

Both sections have the same shape (mxisd's, plus ma1sd's ``lookup.query``
and ``profile.role``). A query left at None takes the section's default:
mxisd's for ``sql``, the built-in Synapse queries for ``synapseSql``.
"""

from __future__ import annotations

from typing import Any

_QUERY_DEFAULTS: dict[str, dict[str, Any]] = {
    "sql": {
        "identity.type": "mxid",
        # mxisd's and ma1sd's default, written for a Synapse-like table.
        "identity.query": (
            "SELECT user_id AS uid FROM user_threepids WHERE medium = ? AND address = ?"
        ),
        "directory.type": "localpart",
    },
    # The built-in Synapse queries return full user ids.
    "synapseSql": {
        "identity.type": "mxid",
        "identity.query": None,
        "directory.type": "mxid",
    },
}


def _section(prefix: str) -> dict[str, tuple[tuple[type, ...], Any]]:
    defaults = _QUERY_DEFAULTS[prefix]
    return {
        f"{prefix}.enabled": ((bool,), False),
        f"{prefix}.type": ((str,), "sqlite"),
        f"{prefix}.connection": ((str,), ""),
        # Ours: seconds allowed to connect and to run one statement.
        f"{prefix}.timeout": ((int, float), 5),
        # mxisd's key; SQL stores never check passwords, so only false is valid.
        f"{prefix}.auth.enabled": ((bool,), None),
        f"{prefix}.identity.enabled": ((bool,), None),
        f"{prefix}.identity.type": ((str,), defaults["identity.type"]),
        f"{prefix}.identity.query": ((str,), defaults["identity.query"]),
        f"{prefix}.identity.medium": ((dict,), {}),
        f"{prefix}.directory.enabled": ((bool,), None),
        f"{prefix}.directory.query.name.type": ((str,), defaults["directory.type"]),
        f"{prefix}.directory.query.name.value": ((str,), None),
        f"{prefix}.directory.query.threepid.type": (
            (str,),
            defaults["directory.type"],
        ),
        f"{prefix}.directory.query.threepid.value": ((str,), None),
        f"{prefix}.profile.enabled": ((bool,), None),
        f"{prefix}.profile.displayName.query": ((str,), None),
        f"{prefix}.profile.threepid.query": ((str,), None),
        f"{prefix}.profile.role.type": ((str,), "mxid"),
        f"{prefix}.profile.role.query": ((str,), None),
        f"{prefix}.lookup.query": ((str,), None),
    }


KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    **_section("sql"),
    **_section("synapseSql"),
}
