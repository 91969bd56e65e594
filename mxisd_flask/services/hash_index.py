"""The hash index: lookup hash -> mxid for every 3PID the stores can list.

v2 ``sha256`` lookups send hashes, so a store can only answer them if we
hashed its 3PIDs beforehand. The index is built from every store with the
LISTING capability, under the current pepper, and rebuilt when the pepper
changes and every ``hashing.index.refresh`` seconds. A rebuild runs in a
background thread and replaces the table in one assignment, so lookups keep
answering from the previous table meanwhile; only the first lookup under a
new pepper waits for its table (at most ``hashing.index.buildTimeout``).
Each store's entries are kept apart: a store that fails to list keeps its
previous entries (or is left out) while the others' are renewed, and the
next attempt comes after ``RETRY_S`` rather than a whole interval.

Keys are the raw 32-byte digests and equal mxids share one string, which
keeps a million entries to roughly 200 MiB.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from unpaddedbase64 import decode_base64

from mxisd_flask.errors import StoreError
from mxisd_flask.stores.base import Capability, IdentityStore

logger = logging.getLogger(__name__)


# After a store failed to list, try again this soon rather than a whole
# refresh interval later.
RETRY_S = 30


@dataclass(frozen=True)
class _Table:
    pepper: str
    rebuild_at: float  # time.monotonic() after which a rebuild starts
    # (store name, digest -> mxid), in the order the stores are asked.
    parts: tuple[tuple[str, dict[bytes, str]], ...]

    def part(self, name: str) -> dict[bytes, str] | None:
        return next((entries for n, entries in self.parts if n == name), None)


class HashIndex:
    def __init__(
        self,
        stores: Sequence[IdentityStore],
        refresh_s: float,
        build_timeout_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stores = [s for s in stores if s.supports(Capability.LISTING)]
        self._refresh_s = refresh_s
        self._build_timeout_s = build_timeout_s
        self._monotonic = monotonic
        self._table: _Table | None = None
        self._lock = threading.Lock()
        self._building: tuple[str, threading.Event] | None = None

    @property
    def empty(self) -> bool:
        """Whether no store can list its 3PIDs (the index never has entries)."""
        return not self._stores

    def lookup(self, hashes: Sequence[str], pepper: str) -> dict[str, str]:
        """mxids for those of ``hashes`` (under ``pepper``) the stores know."""
        if not self._stores:
            return {}
        table = self._table_for(pepper)
        if table is None:
            return {}
        found = {}
        for value in hashes:
            try:
                digest = decode_base64(value)
            except ValueError:  # not base64: cannot be one of ours
                continue
            for _name, entries in table.parts:
                mxid = entries.get(digest)
                if mxid is not None:
                    found[value] = mxid
                    break
        return found

    def _table_for(self, pepper: str) -> _Table | None:
        table = self._table
        if table is not None and table.pepper == pepper:
            if self._monotonic() >= table.rebuild_at:
                self._start_build(pepper)  # answer from this one meanwhile
            return table
        done = self._start_build(pepper)
        if not done.wait(self._build_timeout_s):
            logger.warning("hash index not ready after %.0fs", self._build_timeout_s)
        table = self._table
        return table if table is not None and table.pepper == pepper else None

    def _start_build(self, pepper: str) -> threading.Event:
        with self._lock:
            if self._building is not None and self._building[0] == pepper:
                return self._building[1]
            done = threading.Event()
            self._building = (pepper, done)
        thread = threading.Thread(
            target=self._build, args=(pepper, done), name="hash-index", daemon=True
        )
        thread.start()
        return done

    def _build(self, pepper: str, done: threading.Event) -> None:
        started = self._monotonic()
        previous = self._table
        if previous is not None and previous.pepper != pepper:
            previous = None  # hashes under another pepper are of no use
        parts = []
        failed = False
        for store in self._stores:
            try:
                parts.append((store.name, self.hash_threepids(store, pepper)))
            except StoreError as exc:
                # One store down must not empty the index of the others; its
                # previous part (same pepper) is kept until it answers again.
                failed = True
                kept = previous.part(store.name) if previous is not None else None
                if kept is not None:
                    parts.append((store.name, kept))
                logger.warning(
                    "hash index: store=%s failed to list, %s: %s",
                    store.name,
                    "kept its previous entries" if kept is not None else "left out",
                    exc,
                )
        now = self._monotonic()
        delay = min(self._refresh_s, RETRY_S) if failed else self._refresh_s
        with self._lock:
            self._table = _Table(pepper, now + delay, tuple(parts))
            self._building = None
        done.set()
        logger.info(
            "hash index built entries=%d seconds=%.2f",
            sum(len(entries) for _, entries in parts),
            now - started,
        )

    @staticmethod
    def hash_threepids(store: IdentityStore, pepper: str) -> dict[bytes, str]:
        """digest -> mxid for every 3PID ``store`` lists, under ``pepper``."""
        entries: dict[bytes, str] = {}
        mxids: dict[str, str] = {}  # one string per mxid, however many 3PIDs
        sha256 = hashlib.sha256
        for medium, address, mxid in store.iter_threepids():
            digest = sha256(f"{address} {medium} {pepper}".encode()).digest()
            if digest not in entries:
                entries[digest] = mxids.setdefault(mxid, mxid)
        return entries

    def build_entries(self, pepper: str) -> dict[bytes, str]:
        """All stores' entries merged, earlier stores winning (benchmarks)."""
        merged: dict[bytes, str] = {}
        for store in reversed(self._stores):
            merged.update(self.hash_threepids(store, pepper))
        return merged
