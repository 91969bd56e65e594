"""The lookup chain: identity providers asked in order until one answers."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mxisd_flask.errors import StoreError
from mxisd_flask.storage.bindings import BindingStorage
from mxisd_flask.storage.db import Database
from mxisd_flask.stores.base import IdentityStore

logger = logging.getLogger(__name__)


class LocalBindingProvider:
    """Bindings made on this server (3pid/bind)."""

    name = "bindings"

    def __init__(self, db: Database) -> None:
        self._db = db
        self._storage = BindingStorage()

    def lookup(self, medium: str, address: str) -> str | None:
        with self._db.read() as cur:
            return self._storage.get(cur, medium, address)

    def bulk_lookup(
        self, threepids: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        with self._db.read() as cur:
            return self._storage.get_many(cur, threepids)

    def hashed_lookup(self, hashes: Sequence[str], pepper: str) -> dict[str, str]:
        # Rows carry their hash under the current pepper (PepperService).
        with self._db.read() as cur:
            return self._storage.by_hashes(cur, hashes)


class LookupChain:
    """Chain of responsibility over identity providers, first answer wins."""

    def __init__(self, providers: Sequence[IdentityStore]) -> None:
        self._providers = list(providers)

    def lookup(self, medium: str, address: str) -> str | None:
        for provider in self._providers:
            try:
                mxid = provider.lookup(medium, address)
            except StoreError as exc:
                logger.warning("lookup link failed store=%s: %s", provider.name, exc)
                continue
            if mxid is not None:
                logger.debug("lookup answered store=%s", provider.name)
                return mxid
        return None

    def bulk_lookup(
        self, threepids: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        found: dict[tuple[str, str], str] = {}
        remaining = list(dict.fromkeys(threepids))
        for provider in self._providers:
            if not remaining:
                break
            try:
                answers = provider.bulk_lookup(remaining)
            except StoreError as exc:
                logger.warning("lookup link failed store=%s: %s", provider.name, exc)
                continue
            found.update(answers)
            remaining = [tp for tp in remaining if tp not in found]
        return found

    def hashed_lookup(self, hashes: Sequence[str], pepper: str) -> dict[str, str]:
        found: dict[str, str] = {}
        remaining = list(dict.fromkeys(hashes))
        for provider in self._providers:
            if not remaining:
                break
            try:
                answers = provider.hashed_lookup(remaining, pepper)
            except StoreError as exc:
                logger.warning("lookup link failed store=%s: %s", provider.name, exc)
                continue
            found.update(answers)
            remaining = [h for h in remaining if h not in found]
        return found
