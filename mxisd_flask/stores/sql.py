"""mxisd's ``sql`` store: 3PIDs, directory and profiles from the queries an
organisation writes against its own database.

The ``synapseSql`` store (:mod:`mxisd_flask.stores.synapse_sql`) is this
store with built-in queries for Synapse's schema.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from mxisd_flask.config.sections import Config
from mxisd_flask.errors import ConfigError, StoreError
from mxisd_flask.model import MXID_RE
from mxisd_flask.stores.base import (
    Capability,
    DirectoryEntry,
    IdentityStore,
    Profile,
    ThreePid,
    enabled_capabilities,
)
from mxisd_flask.stores.listing import normalise_listed
from mxisd_flask.stores.sql_db import Query, SqlDatabase, Target, parse_target, prepare

logger = logging.getLogger(__name__)

ID_TYPES = {"localpart": "localpart", "uid": "localpart", "mxid": "mxid"}
LISTING_COLUMNS = ("mxid", "medium", "address")


@dataclass(frozen=True)
class IdQuery:
    """A query whose first (or ``uid``) column is a user, and how to read it."""

    query: Query
    id_type: str  # localpart | mxid
    escape_like: bool = False  # built-in queries escape % and _ in terms


@dataclass(frozen=True)
class SqlSection:
    """A parsed ``sql`` or ``synapseSql`` section."""

    name: str
    target: Target
    domain: str
    capabilities: frozenset[Capability]
    identity_type: str
    identity: Query | None
    identity_media: Mapping[str, Query]
    directory_name: IdQuery | None
    directory_threepid: IdQuery | None
    display_name: Query | None
    profile_threepids: Query | None
    roles: IdQuery | None
    listing: Query | None
    # synapseSql binds the localpart where Synapse's tables hold one.
    profile_binds_localpart: bool = False


def from_config(config: Config) -> SqlIdentityStore | None:
    if not config.values["sql.enabled"]:
        return None
    section = parse_section(config, "sql", {})
    store = SqlIdentityStore(section)
    store.check()
    return store


def parse_section(
    config: Config, prefix: str, builtin: Mapping[str, str]
) -> SqlSection:
    """Read ``<prefix>.*``; ``builtin`` supplies queries the admin left out."""
    v = config.values
    if v[f"{prefix}.auth.enabled"]:
        raise ConfigError(f"{prefix}.auth.enabled: SQL stores cannot check passwords")
    target = parse_target(
        prefix,
        v[f"{prefix}.type"],
        v[f"{prefix}.connection"],
        float(v[f"{prefix}.timeout"]),
        config.base_dir,
    )

    def query(key: str) -> Query | None:
        text = v[f"{prefix}.{key}"]
        if text is None:
            text = builtin.get(key)
        return prepare(f"{prefix}.{key}", text, target.kind) if text else None

    def id_query(key: str, type_key: str) -> IdQuery | None:
        found = query(key)
        if found is None:
            return None
        builtin_used = v[f"{prefix}.{key}"] is None and key in builtin
        return IdQuery(found, _id_type(v, f"{prefix}.{type_key}"), builtin_used)

    section = SqlSection(
        name=prefix,
        target=target,
        domain=config.domain,
        capabilities=frozenset(),
        identity_type=_id_type(v, f"{prefix}.identity.type"),
        identity=query("identity.query"),
        identity_media=_media(v[f"{prefix}.identity.medium"], prefix, target.kind),
        directory_name=id_query(
            "directory.query.name.value", "directory.query.name.type"
        ),
        directory_threepid=id_query(
            "directory.query.threepid.value", "directory.query.threepid.type"
        ),
        display_name=query("profile.displayName.query"),
        profile_threepids=query("profile.threepid.query"),
        roles=id_query("profile.role.query", "profile.role.type"),
        listing=query("lookup.query"),
        profile_binds_localpart=prefix == "synapseSql",
    )
    offered = enabled_capabilities(v, prefix, _offered(section))
    return dataclasses.replace(section, capabilities=offered)


def _offered(s: SqlSection) -> set[Capability]:
    """The capabilities ``s`` has queries for."""
    offered = set()
    if s.identity or s.identity_media:
        offered.add(Capability.LOOKUP)
    if s.listing:
        offered.add(Capability.LISTING)
    if s.directory_name or s.directory_threepid:
        offered.add(Capability.DIRECTORY)
    if s.display_name or s.profile_threepids or s.roles:
        offered.add(Capability.PROFILE)
    return offered


def _id_type(v: Mapping[str, Any], key: str) -> str:
    value = v[key]
    if value not in ID_TYPES:
        raise ConfigError(f"{key}: must be localpart (or uid) or mxid")
    return ID_TYPES[value]


def _media(raw: Mapping[Any, Any], prefix: str, kind: str) -> dict[str, Query]:
    media = {}
    for medium, text in raw.items():
        key = f"{prefix}.identity.medium.{medium}"
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{key}: expected an SQL query")
        media[str(medium)] = prepare(key, text, kind)
    return media


class SqlIdentityStore(IdentityStore):
    name = "sql"

    def __init__(self, section: SqlSection) -> None:
        self.section = section
        self.name = section.name
        self.capabilities = section.capabilities
        self.db = SqlDatabase(section.target, section.name)

    def check(self) -> None:
        """Ask the database whether each query is valid, if it can be reached.

        A bad query (syntax, unknown table or column, missing result column)
        is a ConfigError now rather than a failure on every lookup later. A
        database that is down is only a warning: it may come back.
        """
        try:
            for query, needed in self._checks():
                self._check_columns(query, needed)
        except StoreError as exc:
            logger.warning(
                "store unreachable, queries not checked store=%s: %s", self.name, exc
            )
        finally:
            self.db.close()  # serving threads open their own connections

    def _checks(self) -> Iterator[tuple[Query, tuple[str, ...]]]:
        s = self.section
        for query in (s.identity, *s.identity_media.values()):
            if query is not None:
                self._check_placeholders(query, (1, 2))
                yield query, ()
        for id_query in (s.directory_name, s.directory_threepid):
            if id_query is not None:
                yield id_query.query, ()
        for query in (s.display_name, s.profile_threepids):
            if query is not None:
                self._check_placeholders(query, (1,))
                yield query, ()
        if s.roles is not None:
            self._check_placeholders(s.roles.query, (1,))
            yield s.roles.query, ()
        if s.listing is not None:
            self._check_placeholders(s.listing, (0,))
            yield s.listing, LISTING_COLUMNS

    def _check_placeholders(self, query: Query, allowed: tuple[int, ...]) -> None:
        if query.placeholders not in allowed:
            wanted = " or ".join(str(n) for n in allowed)
            raise ConfigError(f"{query.key}: expected {wanted} ? placeholders")

    def _check_columns(self, query: Query, needed: tuple[str, ...]) -> None:
        columns = self.db.columns(query)
        missing = [name for name in needed if name not in columns]
        if not columns or missing:
            raise ConfigError(
                f"{query.key}: the query must return {', '.join(needed) or 'a column'}"
            )

    # LOOKUP

    def lookup(self, medium: str, address: str) -> str | None:
        query = self.section.identity_media.get(medium) or self.section.identity
        if query is None:
            return None
        params = (medium, address) if query.placeholders == 2 else (address,)
        # mxisd reads the column named uid; a query without one gives its first.
        for row in self.db.rows(query, params, first="uid"):
            mxid = self._user(row[0], self.section.identity_type)
            if mxid is not None:
                return mxid
        return None

    # LISTING

    def iter_threepids(self) -> Iterator[tuple[str, str, str]]:
        listing = self.section.listing
        if listing is None:
            return
        # A user's rows usually come together: check each user id once per
        # run of rows, and hand the index one string per user.
        last_raw: Any = None
        mxid: str | None = None
        for raw, medium, address in self.db.stream(listing):
            if raw != last_raw:
                last_raw, mxid = raw, self._user(raw, "mxid")
            normalised = normalise_listed(medium, address)
            if mxid is not None and normalised is not None:
                yield medium, normalised, mxid

    # DIRECTORY

    def directory_search(self, term: str, by_threepid: bool) -> list[DirectoryEntry]:
        found: dict[str, DirectoryEntry] = {}
        s = self.section
        for id_query in (
            s.directory_name,
            s.directory_threepid if by_threepid else None,
        ):
            if id_query is None:
                continue
            if id_query.escape_like:
                term = re.sub(r"([\\%_])", r"\\\1", term)
            pattern = f"%{term}%"
            rows = self.db.rows(id_query.query, [pattern] * id_query.query.placeholders)
            for row in rows:
                mxid = self._user(row[0], id_query.id_type)
                if mxid is not None and mxid not in found:
                    name = str(row[1]) if len(row) > 1 and row[1] is not None else None
                    found[mxid] = DirectoryEntry(mxid, name)
        return list(found.values())

    # PROFILE

    def profile(self, mxid: str) -> Profile | None:
        s = self.section
        user = mxid[1:].split(":", 1)[0] if s.profile_binds_localpart else mxid
        display_name = None
        if s.display_name is not None:
            rows = self.db.rows(s.display_name, (user,))
            display_name = str(rows[0][0]) if rows and rows[0][0] is not None else None
        threepids = self._profile_threepids(mxid)
        roles = self._roles(mxid)
        if display_name is None and not threepids and not roles:
            return None
        return Profile(display_name, threepids, roles)

    def _profile_threepids(self, mxid: str) -> tuple[ThreePid, ...]:
        query = self.section.profile_threepids
        if query is None:
            return ()
        found = []
        for medium, address in (row[:2] for row in self.db.rows(query, (mxid,))):
            normalised = normalise_listed(medium, address)
            if normalised is not None:
                found.append((str(medium), normalised))
        return tuple(dict.fromkeys(found))

    def _roles(self, mxid: str) -> tuple[str, ...]:
        roles = self.section.roles
        if roles is None:
            return ()
        user = mxid[1:].split(":", 1)[0] if roles.id_type == "localpart" else mxid
        rows = self.db.rows(roles.query, (user,))
        return tuple(dict.fromkeys(str(row[0]) for row in rows if row[0] is not None))

    def _user(self, value: Any, id_type: str) -> str | None:
        """The mxid in a result column, or None when it is not one."""
        if not isinstance(value, str) or not value:
            return None
        mxid = f"@{value}:{self.section.domain}" if id_type == "localpart" else value
        mxid = mxid.lower()
        if not MXID_RE.match(mxid) or len(mxid) > 255:
            logger.debug("ignored a row with an invalid user id store=%s", self.name)
            return None
        return mxid

    def close(self) -> None:
        self.db.close()
