"""mxisd's ``ldap`` store: OpenLDAP, Active Directory, Samba and the like.

Users are the entries under the base DNs matching the configured filters;
an entry's uid attribute gives its mxid, its 3PID attributes its addresses.
Every value that goes into a filter passes through ``escape_filter_chars``,
so an address holding ``*``, ``(``, ``)``, ``\\`` or NUL is only ever
compared, never read as filter syntax.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import ldap
from ldap.controls import SimplePagedResultsControl
from ldap.filter import escape_filter_chars

from mxisd_flask.config.sections import Config
from mxisd_flask.errors import MatrixError
from mxisd_flask.model import MXID_RE, normalise_address
from mxisd_flask.stores.base import (
    AuthResult,
    Capability,
    DirectoryEntry,
    IdentityStore,
    Profile,
    ThreePid,
    enabled_capabilities,
)
from mxisd_flask.stores.ldap_config import LdapConfig, parse_ldap_config
from mxisd_flask.stores.ldap_pool import LdapConnectionPool

logger = logging.getLogger(__name__)

Entry = dict[str, list[str]]  # lower-case attribute name -> values
BULK_CHUNK = 50  # addresses per OR filter: short filters, few round trips
PAGE_SIZE = 500  # Active Directory's MaxPageSize is 1000
DIRECTORY_LIMIT = 50
PROXY_ADDRESSES = "proxyaddresses"  # AD: "SMTP:primary", "smtp:alias", "X500:..."
# Numbers shorter than any E.164 number are not searched digit by digit: a
# pattern of two or three digits would match most of the directory.
MIN_DIGITS = 7


def from_config(config: Config) -> LdapIdentityStore | None:
    if not config.values["ldap.enabled"]:
        return None
    return LdapIdentityStore(
        parse_ldap_config(config.values, config.domain),
        enabled_capabilities(config.values, "ldap", LdapIdentityStore.SUPPORTED),
    )


class LdapIdentityStore(IdentityStore):
    name = "ldap"
    SUPPORTED = frozenset(Capability)

    def __init__(
        self, config: LdapConfig, capabilities: frozenset[Capability] = SUPPORTED
    ) -> None:
        self.config = config
        self.capabilities = capabilities
        self._pool = LdapConnectionPool(config)
        self._uid = config.uid_attribute.lower()

    # Identity (3PID -> mxid)

    def lookup(self, medium: str, address: str) -> str | None:
        query = self._threepid_query(medium, [address])
        if query is None:
            return None
        filterstr = _and(self.config.identity_filter, query)
        entries = self._pool.run(lambda c: self._search(c, filterstr, [self._uid]))
        for entry in entries:
            mxid = self._mxid_of(entry)
            if mxid is not None:
                return mxid
        if self._formatted_numbers(medium):
            return self._formatted_lookup([address]).get((medium, address))
        return None

    def bulk_lookup(self, threepids: Sequence[ThreePid]) -> dict[ThreePid, str]:
        by_medium: dict[str, list[str]] = {}
        for medium, address in threepids:
            by_medium.setdefault(medium, []).append(address)
        found: dict[ThreePid, str] = {}
        for medium, addresses in by_medium.items():
            if medium in self.config.medium_queries:
                # A custom query may match on attributes we cannot map back
                # to an address: ask it once per address.
                for address in addresses:
                    mxid = self.lookup(medium, address)
                    if mxid is not None:
                        found[(medium, address)] = mxid
                continue
            for start in range(0, len(addresses), BULK_CHUNK):
                chunk = addresses[start : start + BULK_CHUNK]
                found.update(self._bulk_chunk(medium, chunk))
                missing = [a for a in chunk if (medium, a) not in found]
                if missing and self._formatted_numbers(medium):
                    found.update(self._formatted_lookup(missing))
        return found

    def _bulk_chunk(self, medium: str, addresses: list[str]) -> dict[ThreePid, str]:
        query = self._threepid_query(medium, addresses)
        if query is None:
            return {}
        return self._matching(medium, query, addresses)

    def _formatted_numbers(self, medium: str) -> bool:
        """Whether a miss for ``medium`` is searched again for numbers stored
        with spaces, dashes or brackets (see :func:`_digits_pattern`)."""
        return (
            medium == "msisdn"
            and medium not in self.config.medium_queries
            and bool(self.config.threepid_attributes.get(medium))
        )

    def _formatted_lookup(self, addresses: list[str]) -> dict[ThreePid, str]:
        """msisdn lookups in attributes compared as plain strings (Active
        Directory's telephoneNumber and mobile): "+44 20 7946 0000" equals
        neither "442079460000" nor "+442079460000" there. A substring filter
        with a wildcard between the digits finds it; the entries' numbers,
        normalised, then decide, so "+44 20 7946 00001" is not taken."""
        wanted = [a for a in addresses if a.isdigit() and len(a) >= MIN_DIGITS]
        if not wanted:
            return {}
        attributes = self.config.threepid_attributes["msisdn"]
        query = _or(
            [f"({attr}={_digits_pattern(a)})" for a in wanted for attr in attributes]
        )
        return self._matching("msisdn", query, wanted)

    def _matching(
        self, medium: str, query: str, addresses: list[str]
    ) -> dict[ThreePid, str]:
        """Entries found by ``query``, mapped to those of ``addresses`` their
        own ``medium`` attributes hold."""
        filterstr = _and(self.config.identity_filter, query)
        attrs = [self._uid, *self.config.threepid_attributes[medium]]
        entries = self._pool.run(lambda c: self._search(c, filterstr, attrs))
        wanted = set(addresses)
        found: dict[ThreePid, str] = {}
        for entry in entries:
            mxid = self._mxid_of(entry)
            if mxid is None:
                continue
            for address in self._addresses(entry, medium):
                if address in wanted:
                    found.setdefault((medium, address), mxid)
        return found

    def iter_threepids(self) -> Iterator[tuple[str, str, str]]:
        filterstr = _and(self.config.identity_filter, f"({self._uid}=*)")
        attrs = [self._uid, *self._all_threepid_attributes()]
        with self._pool.connection() as conn:
            for base in self.config.base_dns:
                for entry in self._paged(conn, base, filterstr, attrs):
                    mxid = self._mxid_of(entry)
                    if mxid is None:
                        continue
                    for medium in self.config.threepid_attributes:
                        for address in self._addresses(entry, medium):
                            yield medium, address, mxid

    # Authentication, profile, directory

    def authenticate(
        self, mxid: str, localpart: str, password: str
    ) -> AuthResult | None:
        if not password:
            # An empty password is an anonymous bind, which servers accept.
            return None
        found = self._user(mxid, localpart, self.config.auth_filter)
        if found is None:
            return None
        dn, entry, canonical = found
        if not self._pool.check_password(dn, password):
            logger.debug("ldap auth refused mxid=%s", canonical)
            return None
        return AuthResult(mxid=canonical, profile=self._profile_of(entry))

    def profile(self, mxid: str) -> Profile | None:
        localpart = mxid[1:].split(":", 1)[0] if mxid.startswith("@") else mxid
        found = self._user(mxid, localpart, self.config.global_filter)
        return self._profile_of(found[1]) if found is not None else None

    def directory_search(self, term: str, by_threepid: bool) -> list[DirectoryEntry]:
        term = term.strip()
        if not term or "\x00" in term:  # see _threepid_query on NUL
            return []
        if by_threepid:
            attributes = self._all_threepid_attributes()
        else:
            attributes = [self.config.name_attribute, *self.config.directory_other]
        pattern = f"*{escape_filter_chars(term)}*"
        query = _or([f"({attr}={pattern})" for attr in attributes])
        filterstr = _and(self.config.directory_filter, query)
        attrs = [self._uid, self.config.name_attribute]
        entries = self._pool.run(
            lambda c: self._search(c, filterstr, attrs, DIRECTORY_LIMIT)
        )
        results: dict[str, DirectoryEntry] = {}
        for entry in entries:
            mxid = self._mxid_of(entry)
            if mxid is not None and mxid not in results:
                results[mxid] = DirectoryEntry(mxid, self._name_of(entry))
        return list(results.values())

    def close(self) -> None:
        self._pool.clear()

    def _user(
        self, mxid: str, localpart: str, user_filter: str
    ) -> tuple[str, Entry, str] | None:
        """The one entry whose mxid is ``mxid``: (dn, entry, canonical mxid)."""
        canonical = mxid.lower()
        value = mxid if self.config.uid_type == "mxid" else localpart
        if not value or "\x00" in value:  # see _threepid_query on NUL
            return None
        filterstr = _and(user_filter, self._uid_query(value))
        attrs = [
            self._uid,
            self.config.name_attribute,
            *self._all_threepid_attributes(),
        ]
        entries = self._pool.run(lambda c: self._search_dns(c, filterstr, attrs))
        matching = [
            (dn, entry)
            for dn, entry in entries
            if (self._mxid_of(entry) or "").lower() == canonical
        ]
        if len(matching) != 1:
            if matching:
                logger.warning(
                    "ldap: %d entries for one user, refused mxid=%s",
                    len(matching),
                    canonical,
                )
            return None
        return matching[0][0], matching[0][1], canonical

    def _profile_of(self, entry: Entry) -> Profile:
        threepids = []
        for medium in self.config.threepid_attributes:
            for address in self._addresses(entry, medium):
                if (medium, address) not in threepids:
                    threepids.append((medium, address))
        return Profile(display_name=self._name_of(entry), threepids=tuple(threepids))

    # Filters

    def _threepid_query(self, medium: str, addresses: Iterable[str]) -> str | None:
        """A filter matching any of ``addresses``; None when none can match."""
        # slapd cuts an IA5 value such as mail at an escaped NUL ("a@b\\00x"
        # matches "a@b"), and no address holds one: never send such a value.
        addresses = [a for a in addresses if a and "\x00" not in a]
        if not addresses:
            return None
        custom = self.config.medium_queries.get(medium)
        if custom is not None:
            token = self.config.identity_token
            return _or(
                [custom.replace(token, escape_filter_chars(a)) for a in addresses]
            )
        attributes = self.config.threepid_attributes.get(medium)
        if not attributes:
            return None
        terms = [
            f"({attr}={escape_filter_chars(value)})"
            for address in addresses
            for attr in attributes
            for value in _assertion_values(medium, attr, address)
        ]
        return _or(terms)

    def _uid_query(self, value: str) -> str:
        escaped = escape_filter_chars(value)
        attr = self.config.uid_attribute
        if self.config.uid_type == "uid" and self._uid == "userprincipalname":
            # The localpart is what comes before the UPN's "@".
            return f"(|({attr}={escaped})({attr}={escaped}@*))"
        return f"({attr}={escaped})"

    # Entries

    def _mxid_of(self, entry: Entry) -> str | None:
        values = entry.get(self._uid)
        if not values:
            return None
        if self.config.uid_type == "mxid":
            mxid = values[0]
        else:
            # A userPrincipalName (user@realm) gives its user part.
            localpart = values[0].lower().split("@", 1)[0]
            mxid = f"@{localpart}:{self.config.domain}"
        if not MXID_RE.match(mxid):
            logger.debug("ldap entry skipped: uid %r is no valid mxid", values[0])
            return None
        return mxid

    def _name_of(self, entry: Entry) -> str | None:
        values = entry.get(self.config.name_attribute.lower())
        return values[0] if values else None

    def _addresses(self, entry: Entry, medium: str) -> list[str]:
        """The entry's normalised addresses of ``medium``, without duplicates."""
        found: list[str] = []
        for attr in self.config.threepid_attributes.get(medium, ()):
            for value in entry.get(attr.lower(), []):
                if attr.lower() == PROXY_ADDRESSES:
                    prefix, _, value = value.partition(":")
                    if prefix.lower() != "smtp":
                        continue  # X500:, SIP:, ... are not mail addresses
                try:
                    address = normalise_address(medium, value.strip())
                except MatrixError:
                    continue  # not an address of this medium: skip the value
                if address not in found:
                    found.append(address)
        return found

    def _all_threepid_attributes(self) -> list[str]:
        attrs: list[str] = []
        for attributes in self.config.threepid_attributes.values():
            attrs += [a for a in attributes if a not in attrs]
        return attrs

    # Searches

    def _search(
        self, conn: Any, filterstr: str, attrs: list[str], limit: int = 0
    ) -> list[Entry]:
        return [entry for _, entry in self._search_dns(conn, filterstr, attrs, limit)]

    def _search_dns(
        self, conn: Any, filterstr: str, attrs: list[str], limit: int = 0
    ) -> list[tuple[str, Entry]]:
        """Entries under every base DN; at most ``limit`` (0: no limit)."""
        logger.debug("ldap search filter=%s", filterstr)
        found: list[tuple[str, Entry]] = []
        for base in self.config.base_dns:
            wanted = limit - len(found) if limit else 0
            found += self._search_base(conn, base, filterstr, attrs, wanted)
            if limit and len(found) >= limit:
                break
        return found

    def _search_base(
        self, conn: Any, base: str, filterstr: str, attrs: list[str], limit: int
    ) -> list[tuple[str, Entry]]:
        timeout = self.config.timeout_s
        msgid = conn.search_ext(
            base, ldap.SCOPE_SUBTREE, filterstr, attrs, sizelimit=limit
        )
        found: list[tuple[str, Entry]] = []
        try:
            while True:
                kind, data, _, _ = conn.result3(msgid, all=0, timeout=timeout)
                if kind == ldap.RES_SEARCH_RESULT:
                    break
                found += _entries(data)
        except ldap.SIZELIMIT_EXCEEDED:
            pass  # what arrived before the limit is the answer
        return found

    def _paged(
        self, conn: Any, base: str, filterstr: str, attrs: list[str]
    ) -> Iterator[Entry]:
        control = SimplePagedResultsControl(True, size=PAGE_SIZE, cookie="")
        while True:
            msgid = conn.search_ext(
                base, ldap.SCOPE_SUBTREE, filterstr, attrs, serverctrls=[control]
            )
            _, data, _, controls = conn.result3(msgid, timeout=self.config.timeout_s)
            for _, entry in _entries(data):
                yield entry
            cookie = next(
                (
                    c.cookie
                    for c in controls
                    if c.controlType == SimplePagedResultsControl.controlType
                ),
                None,
            )
            if not cookie:
                return
            control.cookie = cookie


def _entries(data: list[tuple[Any, Any]]) -> list[tuple[str, Entry]]:
    """Decoded entries; referrals (no DN) and undecodable values left out."""
    out = []
    for dn, raw in data:
        if not isinstance(dn, str) or not isinstance(raw, dict):
            continue
        entry: Entry = {}
        for name, values in raw.items():
            decoded = []
            for value in values:
                try:
                    decoded.append(value.decode("utf-8"))
                except UnicodeDecodeError:
                    continue  # binary attribute: no 3PID or name in it
            entry[name.lower()] = decoded
        out.append((dn, entry))
    return out


def _assertion_values(medium: str, attr: str, address: str) -> list[str]:
    """What to compare ``attr`` with to find ``address``."""
    if medium == "email" and attr.lower() == PROXY_ADDRESSES:
        return [f"smtp:{address}"]  # matches "SMTP:" too: AD compares ignoring case
    if medium == "msisdn":
        # Directories store "+44 20 7946 0000"; telephoneNumber matching
        # ignores spaces and dashes but not the "+".
        return [address, f"+{address}"]
    return [address]


def _digits_pattern(digits: str) -> str:
    """A substring assertion value matching ``digits`` with anything between
    and around them: "*4*4*2*0*...*0*". Only ever built from digits."""
    return f"*{'*'.join(digits)}*"


def _or(terms: list[str]) -> str:
    return terms[0] if len(terms) == 1 else f"(|{''.join(terms)})"


def _and(user_filter: str, query: str) -> str:
    return f"(&{user_filter}{query})" if user_filter else query
