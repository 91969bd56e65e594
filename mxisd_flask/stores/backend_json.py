"""mxisd's JSON shapes for identity backends, shared by the REST and exec stores.

mxisd defined one set of request and answer bodies for the backends an admin
writes (a web service for the REST store, a script for the exec store), so
existing backends keep working here. Answers come from code we do not
control: every shape is checked, and a wrong one raises StoreError (the chain
then asks the next store) rather than a TypeError deep in a view.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from mxisd_flask.errors import MatrixError, StoreError
from mxisd_flask.model import MXID_RE, normalise_address
from mxisd_flask.stores.base import AuthResult, DirectoryEntry, Profile, ThreePid

logger = logging.getLogger(__name__)

T = TypeVar("T")

# 3PIDs per bulk request, so an answer stays well below a 1 MiB read limit.
BULK_CHUNK = 500
# mxisd's user id types; "uid" is the name its first exec store used.
LOCALPART_TYPES = ("localpart", "uid")
MXID_TYPES = ("mxid",)


def user_parts(mxid: str) -> dict[str, str]:
    """The mxid, localpart and domain fields every user request carries."""
    localpart, _, domain = mxid[1:].partition(":")
    return {"mxid": mxid, "localpart": localpart, "domain": domain}


def canonical_mxid(value: object, domain: str, id_type: str = "") -> str:
    """A backend's user id as a lower-case mxid; StoreError when it is not one.

    A localpart gets our ``domain``; with no ``id_type`` a value starting
    with ``@`` is taken as a whole mxid (mxisd's directory answers do this).
    """
    if not isinstance(value, str) or not value:
        raise StoreError("backend answer: user id is not a string")
    if id_type in MXID_TYPES or (not id_type and value.startswith("@")):
        mxid = value
    elif id_type in LOCALPART_TYPES or not id_type:
        mxid = f"@{value}:{domain}"
    else:
        raise StoreError(f"backend answer: unknown user id type {id_type[:20]!r}")
    mxid = mxid.lower()
    if len(mxid) > 255 or not MXID_RE.match(mxid):
        raise StoreError("backend answer: user id is not a valid Matrix ID")
    return mxid


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StoreError(f"backend answer: {what} is not a JSON object")
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise StoreError(f"backend answer: {what} is not a JSON list")
    return value


def _id_of(item: dict[str, Any], domain: str) -> str:
    ident = _object(item.get("id"), "lookup id")
    id_type = ident.get("type")
    if not isinstance(id_type, str) or not id_type:
        raise StoreError("backend answer: lookup id has no type")
    return canonical_mxid(ident.get("value"), domain, id_type)


def single_request(medium: str, address: str) -> dict[str, Any]:
    return {"medium": medium, "address": address}


def bulk_request(threepids: Sequence[ThreePid]) -> dict[str, Any]:
    return {"lookup": [single_request(m, a) for m, a in threepids]}


def parse_single(body: object, domain: str) -> str | None:
    """``{"lookup": {"id": {"type", "value"}, ...}}``, or ``{}`` when unknown."""
    lookup = _object(body, "answer").get("lookup")
    if not lookup:
        return None
    return _id_of(_object(lookup, "lookup"), domain)


def parse_bulk(
    body: object, domain: str, wanted: Sequence[ThreePid]
) -> dict[ThreePid, str]:
    """``{"lookup": [{"medium", "address", "id"}, ...]}`` for those asked.

    The backend may spell an address its own way (upper case, a '+'), so
    answers are normalised before they are matched to the question; entries
    for 3PIDs nobody asked about are dropped.
    """
    asked = set(wanted)
    found: dict[ThreePid, str] = {}
    for item in _list(_object(body, "answer").get("lookup", []), "lookup"):
        entry = _object(item, "lookup entry")
        threepid = threepid_of(entry)
        if threepid is not None and threepid in asked:
            found[threepid] = _id_of(entry, domain)
    return found


def parse_listing(
    body: object, domain: str
) -> tuple[list[tuple[str, str, str]], str | None]:
    """One page of a listing: ``{"lookup": [{"medium", "address", "id"}, ...],
    "next": cursor or null}``, as (medium, address, mxid) triples.

    An entry whose address or user id is unusable is left out, so one bad
    entry in the backend does not keep every other user out of the index.
    """
    answer = _object(body, "answer")
    cursor = answer.get("next")
    if cursor is not None and (not isinstance(cursor, str) or not cursor):
        raise StoreError("backend answer: next is not a non-empty string")
    found = []
    for item in _list(answer.get("lookup", []), "lookup"):
        entry = _object(item, "lookup entry")
        try:
            threepid = threepid_of(entry)
            mxid = _id_of(entry, domain) if threepid is not None else None
        except StoreError as exc:
            logger.debug("backend listing: entry skipped: %s", exc)
            continue
        if threepid is not None and mxid is not None:
            found.append((*threepid, mxid))
    return found, cursor


def iter_listing(
    ask_page: Callable[[str | None], object | None], domain: str, where: str
) -> Iterator[tuple[str, str, str]]:
    """Every entry of a paged listing; ``ask_page(cursor)`` answers one page
    (None: nothing more). The first page is asked with no cursor."""
    seen: set[str] = set()
    cursor: str | None = None
    while True:
        body = ask_page(cursor)
        if body is None:
            return
        entries, cursor = parse_listing(body, domain)
        yield from entries
        if cursor is None:
            return
        if cursor in seen:
            # A backend handing back an old cursor would list forever.
            raise StoreError(f"{where}: the backend repeated a cursor")
        seen.add(cursor)


def threepid_of(entry: dict[str, Any]) -> ThreePid | None:
    """A normalised (medium, address), or None for an address we cannot use."""
    medium, address = entry.get("medium"), entry.get("address")
    if not isinstance(medium, str) or not isinstance(address, str):
        raise StoreError("backend answer: a 3PID needs medium and address strings")
    try:
        return medium, normalise_address(medium, address)
    except MatrixError:
        logger.debug("backend answer: unusable address skipped medium=%s", medium)
        return None


def threepids_of(value: object) -> tuple[ThreePid, ...]:
    found = []
    for item in _list(value, "threepids"):
        threepid = threepid_of(_object(item, "3PID"))
        if threepid is not None and threepid not in found:
            found.append(threepid)
    return tuple(found)


def _profile_fields(data: dict[str, Any], threepid_keys: Sequence[str]) -> Profile:
    name = data.get("display_name")
    if name is not None and not isinstance(name, str):
        raise StoreError("backend answer: display_name is not a string")
    threepids: tuple[ThreePid, ...] = ()
    for key in threepid_keys:
        if data.get(key) is not None:
            threepids = threepids_of(data[key])
            break
    roles = data.get("roles") or []
    if not all(isinstance(r, str) for r in _list(roles, "roles")):
        raise StoreError("backend answer: roles are not strings")
    return Profile(name or None, threepids, tuple(roles))


def parse_auth(
    body: object, mxid: str, domain: str, assume_success: bool = False
) -> AuthResult | None:
    """``{"auth": {"success", "id"?, "profile"?}}``; None when refused.

    Without ``assume_success`` (the REST store) an answer must say
    ``"success": true``; the exec store has its exit status say it, and the
    answer may then only take it back with ``"success": false``.
    """
    auth = _object(_object(body, "answer").get("auth"), "auth")
    if auth.get("success", assume_success) is not True:
        return None
    if auth.get("id") is not None:
        mxid = _id_of(auth, domain)
    # mxisd's auth answers spell it three_pids, its profile answers threepids.
    profile = _profile_fields(
        _object(auth.get("profile") or {}, "profile"), ("three_pids", "threepids")
    )
    return AuthResult(mxid=mxid.lower(), profile=profile)


def directory_request(term: str, by_threepid: bool) -> dict[str, Any]:
    return {"by": "threepid" if by_threepid else "name", "search_term": term}


def parse_directory(body: object, domain: str) -> list[DirectoryEntry]:
    """``{"limited": bool, "results": [{"user_id", "display_name", ...}]}``."""
    results = _object(body, "answer").get("results", [])
    entries = []
    for item in _list(results, "results"):
        result = _object(item, "result")
        name, avatar = result.get("display_name"), result.get("avatar_url")
        if not all(v is None or isinstance(v, str) for v in (name, avatar)):
            raise StoreError("backend answer: display_name/avatar_url not strings")
        entries.append(
            DirectoryEntry(canonical_mxid(result.get("user_id"), domain), name, avatar)
        )
    return entries


def parse_profile(body: object) -> Profile | None:
    """``{"profile": {...}}``; None for ``{"profile": {}}`` (no such user)."""
    data = _object(_object(body, "answer").get("profile"), "profile")
    if not data:
        return None
    return _profile_fields(data, ("threepids", "three_pids"))


def merge_profiles(parts: Sequence[Profile | None]) -> Profile | None:
    """One Profile from the answers of the name, 3PID and role questions."""
    known = [p for p in parts if p is not None]
    if not known:
        return None
    name = next((p.display_name for p in known if p.display_name), None)
    threepids = tuple(dict.fromkeys(tp for p in known for tp in p.threepids))
    roles = tuple(dict.fromkeys(r for p in known for r in p.roles))
    return Profile(name, threepids, roles)


def _only_name(found: Profile) -> Profile:
    return Profile(display_name=found.display_name)


def _only_threepids(found: Profile) -> Profile:
    return Profile(threepids=found.threepids)


def _only_roles(found: Profile) -> Profile:
    return Profile(roles=found.roles)


def ask_profile(targets: Sequence[T | None], ask: Callable[[T], Any]) -> Profile | None:
    """A user's profile from the name, 3PIDs and roles questions, in order.

    ``targets`` says where each question goes (None: not configured);
    ``ask`` sends the user request there and gives the answer body, or None
    for "not found". Like mxisd, only the field asked for is read from each
    answer.
    """
    parts = []
    for target, keep in zip(
        targets, (_only_name, _only_threepids, _only_roles), strict=True
    ):
        if target is None:
            continue
        body = ask(target)
        found = None if body is None else parse_profile(body)
        parts.append(None if found is None else keep(found))
    return merge_profiles(parts)
