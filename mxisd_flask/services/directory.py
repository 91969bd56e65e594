"""User directory search: our stores' users merged with the homeserver's.

The homeserver only finds users it knows (who share a room with the
searcher, or are in public rooms); the stores know everyone in the
organisation, before they ever log in. Results are the homeserver's first,
then the stores' users it did not return, at most ``limit`` in all.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mxisd_flask.errors import FetcherError, StoreError, Unknown
from mxisd_flask.outbound import Relayed
from mxisd_flask.services.homeserver_client import HomeserverClient
from mxisd_flask.stores.base import (
    Capability,
    DirectoryEntry,
    IdentityStore,
    stored_profiles,
)

logger = logging.getLogger(__name__)

WHOAMI_PATH = "/_matrix/client/v3/account/whoami"


@dataclass(frozen=True)
class DirectoryConfig:
    exclude_homeserver: bool
    exclude_threepid: bool


def directory_config(values: Mapping[str, Any]) -> DirectoryConfig:
    return DirectoryConfig(
        exclude_homeserver=values["directory.exclude.homeserver"],
        exclude_threepid=values["directory.exclude.threepid"],
    )


@dataclass(frozen=True)
class SearchRequest:
    version: str  # "r0" or "v3", as the client called it
    host: str | None
    access_token: str
    body: dict[str, Any]  # the client's body, checked
    term: str
    limit: int


class DirectoryService:
    def __init__(
        self,
        stores: Sequence[IdentityStore],
        homeserver: HomeserverClient,
        config: DirectoryConfig,
    ) -> None:
        self._stores = [s for s in stores if s.supports(Capability.DIRECTORY)]
        self._profiles = [s for s in stores if s.supports(Capability.PROFILE)]
        self._homeserver = homeserver
        self._config = config

    def search(self, request: SearchRequest) -> Relayed | dict[str, Any]:
        """The merged answer, or the homeserver's own when it refused."""
        if self._config.exclude_homeserver:
            refused = self._check_token(request)
            if refused is not None:
                return refused
            known: list[dict[str, Any]] = []
            limited = False
        else:
            answer = self._homeserver.call(
                "POST",
                f"/_matrix/client/{request.version}/user_directory/search",
                request.host,
                json=request.body,
                headers=_bearer(request.access_token),
            )
            if answer.status != 200:
                return answer  # e.g. 401 M_UNKNOWN_TOKEN, as the client expects
            known, limited = _homeserver_results(answer)
        return self._merge(
            known, limited, self._from_stores(request.term), request.limit
        )

    def _check_token(self, request: SearchRequest) -> Relayed | None:
        """Without the homeserver's search, still only its users may search."""
        answer = self._homeserver.call(
            "GET", WHOAMI_PATH, request.host, headers=_bearer(request.access_token)
        )
        return None if answer.status == 200 else answer

    def _from_stores(self, term: str) -> list[DirectoryEntry]:
        # A search by name, then one by 3PID: the stores on mxisd's backend
        # APIs (LDAP, REST, exec) answer one kind per call, by_threepid=True
        # meaning 3PIDs only. _merge drops the users both searches found.
        kinds = [False] if self._config.exclude_threepid else [False, True]
        found: list[DirectoryEntry] = []
        for store in self._stores:
            try:
                for by_threepid in kinds:
                    found += store.directory_search(term, by_threepid)
            except StoreError as exc:
                logger.warning("directory store failed store=%s: %s", store.name, exc)
        return found

    def _merge(
        self,
        known: list[dict[str, Any]],
        limited: bool,
        entries: list[DirectoryEntry],
        limit: int,
    ) -> dict[str, Any]:
        results = list(known[:limit])
        seen = {r["user_id"] for r in known}
        for entry in entries:
            if entry.mxid in seen:
                continue
            seen.add(entry.mxid)
            if len(results) >= limit:
                limited = True
                break
            results.append(self._result(entry))
        return {"limited": limited or len(known) > limit, "results": results}

    def _result(self, entry: DirectoryEntry) -> dict[str, Any]:
        result: dict[str, Any] = {"user_id": entry.mxid}
        display_name = entry.display_name or self._display_name(entry.mxid)
        if display_name:
            result["display_name"] = display_name
        if entry.avatar_url:
            result["avatar_url"] = entry.avatar_url
        return result

    def _display_name(self, mxid: str) -> str | None:
        """A display name from the profile stores, for entries that lack one."""
        for profile in stored_profiles(self._profiles, mxid):
            if profile.display_name:
                return profile.display_name
        return None


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _homeserver_results(answer: Relayed) -> tuple[list[dict[str, Any]], bool]:
    try:
        body = answer.json()
    except FetcherError as exc:
        raise Unknown("The homeserver answered nonsense") from exc
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or not all(
        isinstance(r, dict) and isinstance(r.get("user_id"), str) for r in results
    ):
        logger.error("homeserver directory answer has no usable results")
        raise Unknown("The homeserver answered nonsense")
    return results, body.get("limited") is True
