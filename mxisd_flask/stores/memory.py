"""mxisd's ``memory`` store: identities listed in the configuration file."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from mxisd_flask.config.sections import MemoryIdentity
from mxisd_flask.crypto.hashing import lookup_hash
from mxisd_flask.errors import MatrixError
from mxisd_flask.model import normalise_address


class MemoryIdentityStore:
    name = "memory"

    def __init__(self, identities: tuple[MemoryIdentity, ...]) -> None:
        self.identities = identities
        self._by_threepid: dict[tuple[str, str], str] = {}
        for identity in identities:
            for medium, address in identity.threepids:
                try:
                    key = (medium, normalise_address(medium, address))
                except MatrixError:
                    continue
                self._by_threepid.setdefault(key, identity.mxid)
        self._lock = threading.Lock()
        self._hashes: tuple[str, dict[str, str]] = ("", {})

    def lookup(self, medium: str, address: str) -> str | None:
        return self._by_threepid.get((medium, address))

    def bulk_lookup(
        self, threepids: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        return {
            tp: self._by_threepid[tp] for tp in threepids if tp in self._by_threepid
        }

    def hashed_lookup(self, hashes: Sequence[str], pepper: str) -> dict[str, str]:
        table = self._hash_table(pepper)
        return {h: table[h] for h in hashes if h in table}

    def _hash_table(self, pepper: str) -> dict[str, str]:
        current_pepper, table = self._hashes
        if current_pepper == pepper:
            return table
        with self._lock:
            table = {
                lookup_hash(address, medium, pepper): mxid
                for (medium, address), mxid in self._by_threepid.items()
            }
            self._hashes = (pepper, table)
        return table
