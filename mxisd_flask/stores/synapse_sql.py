"""mxisd's ``synapseSql`` store: Synapse's own database as an identity store.

The ``sql`` store with built-in queries for the tables Synapse creates
(``user_threepids``, ``profiles``, ``users``), on SQLite or PostgreSQL. Any
query set in the configuration replaces the built-in one. Deactivated
users are left out of the directory; Synapse deletes their 3PIDs itself.
"""

from __future__ import annotations

from mxisd_flask.config.sections import Config
from mxisd_flask.errors import ConfigError
from mxisd_flask.stores.sql import SqlIdentityStore, parse_section

# Synapse keeps emails lower-cased (it canonicalises them on the way in), so
# equality uses its unique (medium, address) index.
_IDENTITY = "SELECT user_id AS uid FROM user_threepids WHERE medium = ? AND address = ?"
_LISTING = "SELECT user_id AS mxid, medium, address FROM user_threepids"
# profiles.user_id holds the localpart; the store binds the localpart here.
_DISPLAY_NAME = "SELECT displayname FROM profiles WHERE user_id = ?"
_THREEPIDS = "SELECT medium, address FROM user_threepids WHERE user_id = ?"
# Synapse's profiles hold localparts and its users full ids: join on the
# localpart cut out of users.name. The term is bound between % with its own
# % and _ escaped (the store does that for built-in queries).
_LOCALPART = {
    "sqlite": "substr(u.name, 2, instr(u.name, ':') - 2)",
    "postgresql": "split_part(substr(u.name, 2), ':', 1)",
}
_LIKE = {"sqlite": "LIKE", "postgresql": "ILIKE"}


def _directory_name(kind: str) -> str:
    return (
        "SELECT u.name, p.displayname FROM users u"
        f" JOIN profiles p ON p.user_id = {_LOCALPART[kind]}"
        f" WHERE u.deactivated = 0 AND p.displayname {_LIKE[kind]} ? ESCAPE '\\'"
    )


def _directory_threepid(kind: str) -> str:
    return (
        "SELECT DISTINCT u.name, p.displayname FROM users u"
        " JOIN user_threepids t ON t.user_id = u.name"
        f" LEFT JOIN profiles p ON p.user_id = {_LOCALPART[kind]}"
        f" WHERE u.deactivated = 0 AND t.address {_LIKE[kind]} ? ESCAPE '\\'"
    )


def from_config(config: Config) -> SqlIdentityStore | None:
    v = config.values
    if not v["synapseSql.enabled"]:
        return None
    kind = v["synapseSql.type"]
    if kind not in ("sqlite", "postgresql"):
        raise ConfigError("synapseSql.type: Synapse runs on sqlite or postgresql")
    builtin = {
        "identity.query": _IDENTITY,
        "lookup.query": _LISTING,
        "profile.displayName.query": _DISPLAY_NAME,
        "profile.threepid.query": _THREEPIDS,
        "directory.query.name.value": _directory_name(kind),
        "directory.query.threepid.value": _directory_threepid(kind),
    }
    store = SqlIdentityStore(parse_section(config, "synapseSql", builtin))
    store.check()
    return store
