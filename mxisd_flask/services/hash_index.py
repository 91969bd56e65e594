"""The hash index: lookup hash -> mxid for every 3PID the stores can list.

v2 ``sha256`` lookups send hashes, so a store can only answer them if we
hashed its 3PIDs beforehand. The index is built from every store with the
LISTING capability, under the current pepper, and rebuilt when the pepper
changes and every ``hashing.index.refresh`` seconds. A rebuild runs in a
background thread and replaces the table in one assignment, so lookups keep
answering from the previous table meanwhile; only the first lookup under a
new pepper waits for its table (at most ``hashing.index.buildTimeout``).

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


@dataclass(frozen=True)
class _Table:
    pepper: str
    built_at: float  # time.monotonic()
    entries: dict[bytes, str]


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
            mxid = table.entries.get(digest) if len(digest) == 32 else None
            if mxid is not None:
                found[value] = mxid
        return found

    def _table_for(self, pepper: str) -> _Table | None:
        table = self._table
        if table is not None and table.pepper == pepper:
            if self._monotonic() - table.built_at >= self._refresh_s:
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
        try:
            entries = self.build_entries(pepper)
        except StoreError as exc:
            # Keep serving the old table (if it is for this pepper) and retry
            # at the next refresh rather than drop a store's 3PIDs.
            logger.warning("hash index rebuild failed, kept the previous one: %s", exc)
            entries = None
        with self._lock:
            if entries is not None:
                self._table = _Table(pepper, self._monotonic(), entries)
            elif self._table is not None and self._table.pepper == pepper:
                self._table = _Table(pepper, self._monotonic(), self._table.entries)
            self._building = None
        done.set()
        if entries is not None:
            logger.info(
                "hash index built entries=%d seconds=%.2f",
                len(entries),
                self._monotonic() - started,
            )

    def build_entries(self, pepper: str) -> dict[bytes, str]:
        """Hash every listed 3PID under ``pepper``; earlier stores win."""
        entries: dict[bytes, str] = {}
        mxids: dict[str, str] = {}
        sha256 = hashlib.sha256
        for store in self._stores:
            for medium, address, mxid in store.iter_threepids():
                digest = sha256(f"{address} {medium} {pepper}".encode()).digest()
                if digest not in entries:
                    entries[digest] = mxids.setdefault(mxid, mxid)
        return entries
