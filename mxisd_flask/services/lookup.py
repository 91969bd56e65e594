"""The lookup chain: identity stores asked in order until one answers, then
(for a request that may recurse) other identity servers."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mxisd_flask.crypto.hashing import lookup_hash
from mxisd_flask.errors import StoreError
from mxisd_flask.services.binding_cache import BindingHashCache
from mxisd_flask.services.hash_index import HashIndex
from mxisd_flask.services.recursion import Found, RemoteLookup
from mxisd_flask.storage.bindings import BindingStorage
from mxisd_flask.storage.db import Database
from mxisd_flask.stores.base import Capability, IdentityStore, ThreePid

logger = logging.getLogger(__name__)


class LocalBindingProvider(IdentityStore):
    """Bindings made on this server (3pid/bind)."""

    name = "bindings"
    capabilities = frozenset({Capability.LOOKUP})

    def __init__(self, db: Database, in_memory: bool) -> None:
        """``in_memory``: keep the hashes in this process's table (SQLite
        only; storage.provider.sqlite.bindingsInMemory)."""
        self._db = db
        self._storage = BindingStorage()
        self.cache = (
            BindingHashCache(db, self._storage)
            if in_memory and db.backend == "sqlite"
            else None
        )

    def lookup(self, medium: str, address: str) -> str | None:
        # The in-memory table, once this process has one, answers without
        # asking SQLite (bench/RESULTS.md: v1 lookup).
        cache = self.cache
        pepper = None if cache is None else cache.pepper
        if cache is not None and pepper is not None:
            hashed = lookup_hash(address, medium, pepper)
            found = cache.lookup([hashed], pepper)
            if found is not None:
                return found.get(hashed)
        with self._db.read() as cur:
            return self._storage.get(cur, medium, address)

    def bulk_lookup(self, threepids: Sequence[ThreePid]) -> dict[ThreePid, str]:
        with self._db.read() as cur:
            return self._storage.get_many(cur, threepids)

    def bound_since(self, medium: str, address: str, mxid: str) -> int | None:
        with self._db.read() as cur:
            return self._storage.bound_since(cur, medium, address, mxid)

    def hashed_lookup(self, hashes: Sequence[str], pepper: str) -> dict[str, str]:
        if self.cache is not None:
            found = self.cache.lookup(hashes, pepper)
            if found is not None:
                return found
        # Rows carry their hash under the current pepper (PepperService).
        with self._db.read() as cur:
            return self._storage.by_hashes(cur, hashes)


class LookupChain:
    """Chain of responsibility: local bindings, the stores in order, then
    (``recursive=True`` only) the remote identity servers.

    A store or remote that fails is logged and skipped; the chain answers
    with what the others know.
    """

    def __init__(
        self,
        bindings: LocalBindingProvider,
        stores: Sequence[IdentityStore],
        index: HashIndex,
        remote: RemoteLookup | None = None,
    ) -> None:
        self._bindings = bindings
        self._stores = [bindings] + [s for s in stores if s.supports(Capability.LOOKUP)]
        self._index = index
        self._remote = remote

    @property
    def bindings_cache(self) -> BindingHashCache | None:
        return self._bindings.cache

    def start_caches(self) -> None:
        """Fill the in-memory table of our bindings now rather than at the
        first hashed lookup (a serving process)."""
        if self._bindings.cache is not None:
            self._bindings.cache.start()

    def lookup(self, medium: str, address: str, recursive: bool = False) -> str | None:
        found = self.find(medium, address, recursive)
        return found.mxid if found else None

    def find(self, medium: str, address: str, recursive: bool = False) -> Found | None:
        """The mxid, and a remote's signed association when a remote answered."""
        for store in self._stores:
            try:
                mxid = store.lookup(medium, address)
            except StoreError as exc:
                logger.warning("lookup link failed store=%s: %s", store.name, exc)
                continue
            if mxid is not None:
                logger.debug("lookup answered store=%s", store.name)
                return Found(mxid)
        if recursive and self._remote is not None:
            return self._remote.lookup(medium, address)
        return None

    def bound_since(self, medium: str, address: str, mxid: str) -> int | None:
        """When the 3PID was bound here to ``mxid``; None if it was not (a
        store's 3PID, or one unbound meanwhile)."""
        return self._bindings.bound_since(medium, address, mxid)

    def bulk_lookup(
        self, threepids: Sequence[ThreePid], recursive: bool = False
    ) -> dict[ThreePid, str]:
        found: dict[ThreePid, str] = {}
        remaining = list(dict.fromkeys(threepids))
        for store in self._stores:
            if not remaining:
                break
            try:
                answers = store.bulk_lookup(remaining)
            except StoreError as exc:
                logger.warning("lookup link failed store=%s: %s", store.name, exc)
                continue
            found.update(answers)
            remaining = [tp for tp in remaining if tp not in found]
        if recursive and remaining and self._remote is not None:
            found.update(self._remote.bulk_lookup(remaining))
        return found

    def hashed_lookup(self, hashes: Sequence[str], pepper: str) -> dict[str, str]:
        """Bindings answer from storage, the stores from the hash index."""
        found = self._bindings.hashed_lookup(hashes, pepper)
        if not self._index.empty:
            remaining = [h for h in dict.fromkeys(hashes) if h not in found]
            if remaining:
                found.update(self._index.lookup(remaining, pepper))
        return found
