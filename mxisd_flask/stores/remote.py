"""The fetcher: how we ask one remote identity server (v2 and v1 lookups).

Only the HTTP exchange lives here: which endpoints, which shapes. Choosing
the remotes, falling back from v2 to v1 and checking signatures is the
services layer's work (services/recursion.py).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mxisd_flask.errors import FetcherError, MatrixError
from mxisd_flask.model import normalise_address
from mxisd_flask.outbound import OutboundClient
from mxisd_flask.stores.base import ThreePid

# Sent on every lookup we make to a remote: a server of ours that receives
# it answers from its own stores and never recurses, so two of our servers
# forwarding to each other cannot loop. The value is our server name.
MARKER_HEADER = "X-Mxisd-Lookup-Via"

V1 = "/_matrix/identity/api/v1"
V2 = "/_matrix/identity/v2"


@dataclass(frozen=True)
class HashDetails:
    algorithms: tuple[str, ...]
    pepper: str


class RemoteIdentityServerFetcher:
    """The lookup endpoints of the identity server at ``base_url``."""

    def __init__(
        self, outbound: OutboundClient, base_url: str, via: str, timeout_s: float
    ) -> None:
        self.base_url = base_url
        self._outbound = outbound
        self._headers = {MARKER_HEADER: via}
        self._timeout_s = timeout_s

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        return self._outbound.request_json(
            method,
            self.base_url + path,
            json=body,
            headers=self._headers,
            timeout_s=self._timeout_s,
        )

    def hash_details(self) -> HashDetails:
        """GET v2/hash_details (HttpStatusError 401/404 on v1-only servers)."""
        answer = self._call("GET", f"{V2}/hash_details")
        if not isinstance(answer, dict):
            raise FetcherError(f"{self.base_url}: hash_details is not an object")
        algorithms = answer.get("algorithms")
        pepper = answer.get("lookup_pepper")
        if not isinstance(algorithms, list) or not isinstance(pepper, str):
            raise FetcherError(f"{self.base_url}: hash_details without a pepper")
        return HashDetails(tuple(a for a in algorithms if isinstance(a, str)), pepper)

    def lookup_v2(
        self, algorithm: str, pepper: str, addresses: Sequence[str]
    ) -> dict[str, str]:
        """POST v2/lookup: {hash or "address medium": mxid} for known ones."""
        body = {"algorithm": algorithm, "pepper": pepper, "addresses": list(addresses)}
        answer = self._call("POST", f"{V2}/lookup", body)
        mappings = answer.get("mappings") if isinstance(answer, dict) else None
        if not isinstance(mappings, dict):
            raise FetcherError(f"{self.base_url}: lookup answer without mappings")
        asked = set(addresses)
        return {k: v for k, v in mappings.items() if k in asked and isinstance(v, str)}

    def lookup_v1(self, medium: str, address: str) -> dict[str, Any] | None:
        """GET v1/lookup: the remote's signed association, or None."""
        query = urllib.parse.urlencode({"medium": medium, "address": address})
        answer = self._call("GET", f"{V1}/lookup?{query}")
        if not isinstance(answer, dict):
            raise FetcherError(f"{self.base_url}: lookup answer is not an object")
        return answer if answer.get("mxid") is not None else None

    def bulk_lookup_v1(self, threepids: Sequence[ThreePid]) -> dict[ThreePid, str]:
        """POST v1/bulk_lookup: mxids of those of ``threepids`` it knows."""
        body = {"threepids": [list(tp) for tp in threepids]}
        answer = self._call("POST", f"{V1}/bulk_lookup", body)
        rows = answer.get("threepids") if isinstance(answer, dict) else None
        if not isinstance(rows, list):
            raise FetcherError(f"{self.base_url}: bulk answer without threepids")
        asked = set(threepids)
        found: dict[ThreePid, str] = {}
        for row in rows:
            if (
                isinstance(row, list)
                and len(row) == 3
                and all(isinstance(x, str) for x in row)
            ):
                try:
                    key = (row[0], normalise_address(row[0], row[1]))
                except MatrixError:
                    continue
                if key in asked:  # an answer for what we did not ask is ignored
                    found[key] = row[2]
        return found

    def pubkey(self, key_id: str) -> str | None:
        """GET v1/pubkey/{keyId}: the base64 public key, or None."""
        path = f"{V1}/pubkey/{urllib.parse.quote(key_id, safe='')}"
        answer = self._call("GET", path)
        key = answer.get("public_key") if isinstance(answer, dict) else None
        return key if isinstance(key, str) else None
