"""Lookup API logic: v1 signed single lookups, bulk, v2 hashed lookups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mxisd_flask.config.sections import HashingConfig
from mxisd_flask.errors import InvalidParam, InvalidPepper, MatrixError
from mxisd_flask.model import normalise_address
from mxisd_flask.services.keys import KeyService
from mxisd_flask.services.lookup import LookupChain
from mxisd_flask.services.pepper import PepperService

MAX_LOOKUP_ADDRESSES = 10000

# A v1 answer about one of our 3PIDs is signed once and handed out again,
# for this long at most, while the chain still answers the same mxid:
# signing was half of what a v1 lookup cost beyond the status endpoint
# (bench/RESULTS.md).
SIGNED_REUSE_MS = 3600 * 1000
# How many signed answers a process keeps; all are dropped when full.
SIGNED_KEPT = 10_000


class LookupService:
    def __init__(
        self,
        chain: LookupChain,
        keys: KeyService,
        pepper: PepperService,
        config: HashingConfig,
    ) -> None:
        self._chain = chain
        self._keys = keys
        self._pepper = pepper
        self._config = config
        # (medium, address) -> (mxid, signed association, when it was signed)
        self._signed: dict[tuple[str, str], tuple[str, dict[str, Any], int]] = {}

    def hash_details(self) -> dict[str, Any]:
        return {
            "algorithms": list(self._algorithms()),
            "lookup_pepper": self._pepper.current(),
        }

    def _algorithms(self) -> tuple[str, ...]:
        return self._config.algorithms if self._config.enabled else ("none",)

    def lookup_v1(
        self, medium: str, address: str, recursive: bool = False
    ) -> dict[str, Any]:
        """GET /_matrix/identity/api/v1/lookup: signed association or {}.

        A remote's association keeps the remote's signature and gets ours
        beside it: a client that checks the server it asked (us) accepts it,
        and the remote's signature still shows where it came from.
        """
        try:
            address = normalise_address(medium, address)
        except MatrixError:
            return {}
        found = self._chain.find(medium, address, recursive)
        if found is None:
            # Unbound: a later binding, even to the same mxid, is dated anew.
            self._signed.pop((medium, address), None)
            return {}
        if found.association is not None:
            return self._keys.sign(found.association)
        return self._signed_association(medium, address, found.mxid)

    def _signed_association(
        self, medium: str, address: str, mxid: str
    ) -> dict[str, Any]:
        """The association, dated as the spec's ts says: when the 3PID was
        verified. For a 3PID bound here that is its bind, and the answer is
        the association bind gave; a store's 3PID is verified as we ask."""
        key = (medium, address)
        now = self._keys.now()
        kept = self._signed.get(key)
        # A wall clock stepped back makes the age negative: sign again
        # rather than hand out an answer dated after now.
        if (
            kept is not None
            and kept[0] == mxid
            and 0 <= now - kept[2] < SIGNED_REUSE_MS
        ):
            return kept[1]
        bound_ts = self._chain.bound_since(medium, address, mxid)
        signed = self._keys.association(medium, address, mxid, bound_ts)
        if len(self._signed) >= SIGNED_KEPT:
            self._signed.clear()
        self._signed[key] = (mxid, signed, now)
        return signed

    def bulk_lookup(
        self, threepids: Sequence[tuple[str, str]], recursive: bool = False
    ) -> list[list[str]]:
        """POST bulk_lookup: [[medium, address, mxid], ...] for the known ones."""
        if len(threepids) > MAX_LOOKUP_ADDRESSES:
            raise InvalidParam(f"At most {MAX_LOOKUP_ADDRESSES} 3PIDs per lookup")
        # Each 3PID as asked, under the form stores know it by: two spellings
        # of one address (case, a phone number's "+") are both answered.
        wanted: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for medium, address in dict.fromkeys(threepids):
            try:
                key = (medium, normalise_address(medium, address))
            except MatrixError:
                continue
            wanted.setdefault(key, []).append((medium, address))
        found = self._chain.bulk_lookup(list(wanted), recursive)
        return [[*asked, mxid] for tp, mxid in found.items() for asked in wanted[tp]]

    def lookup_v2(
        self,
        algorithm: str,
        pepper: str,
        addresses: Sequence[str],
        recursive: bool = False,
    ) -> dict[str, str]:
        """POST /_matrix/identity/v2/lookup: {hash or "address medium": mxid}."""
        if len(addresses) > MAX_LOOKUP_ADDRESSES:
            raise InvalidParam(f"At most {MAX_LOOKUP_ADDRESSES} addresses per lookup")
        current = self._pepper.current()
        if algorithm not in self._algorithms():
            raise InvalidParam("Unknown algorithm", algorithm=algorithm)
        if pepper != current:
            raise InvalidPepper(
                "Unknown or invalid pepper",
                algorithms=list(self._algorithms()),
                lookup_pepper=current,
            )
        if algorithm == "sha256":
            # Never recursive: the hashes are under our pepper, which no
            # remote knows, and cannot be turned back into addresses.
            return self._chain.hashed_lookup(addresses, current)
        return self._plain(addresses, recursive)

    def _plain(self, addresses: Sequence[str], recursive: bool) -> dict[str, str]:
        wanted: dict[tuple[str, str], list[str]] = {}
        for entry in dict.fromkeys(addresses):
            address, _, medium = entry.rpartition(" ")
            try:
                key = (medium, normalise_address(medium, address))
            except MatrixError:
                continue
            wanted.setdefault(key, []).append(entry)
        found = self._chain.bulk_lookup(list(wanted), recursive)
        return {entry: mxid for tp, mxid in found.items() for entry in wanted[tp]}
