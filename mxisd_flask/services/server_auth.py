"""Requests signed by a homeserver (the ``X-Matrix`` Authorization scheme).

A homeserver unbinds its users' 3PIDs without a validation session: it signs
the request with its federation key, as the server-server API describes for
request authentication. We rebuild the signed object (method, URI, origin,
our name, content), fetch the origin's keys from its
``/_matrix/key/v2/server`` through the outbound client, and check the
signature with signedjson.
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import signedjson.key
import signedjson.sign
from signedjson.types import VerifyKey
from unpaddedbase64 import decode_base64

from mxisd_flask.errors import FetcherError, Forbidden, MatrixError
from mxisd_flask.model import check_server_name
from mxisd_flask.outbound import OutboundClient
from mxisd_flask.services.clock import Clock

logger = logging.getLogger(__name__)

KEY_PATH = "/_matrix/key/v2/server"
# Keys are cached at most this long, whatever valid_until_ts promises, so a
# rotated (or revoked) key stops being believed within the hour.
KEY_CACHE_MS = 3600 * 1000
_PARAM = re.compile(r'\s*([A-Za-z_]+)=("(?:[^"\\]|\\.)*"|[^,]*)\s*(?:,|$)')


@dataclass(frozen=True)
class XMatrix:
    origin: str
    key_id: str
    signature: str
    destination: str | None


def parse_x_matrix(header: str) -> XMatrix:
    """The parameters of an ``X-Matrix ...`` Authorization header."""
    scheme, _, rest = header.partition(" ")
    if scheme != "X-Matrix":
        raise Forbidden("Not an X-Matrix authorization")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(rest):
        name, value = match.group(1), match.group(2).strip()
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        params[name] = value
    try:
        origin = check_server_name(params["origin"])
        return XMatrix(origin, params["key"], params["sig"], params.get("destination"))
    except (KeyError, MatrixError) as exc:
        raise Forbidden("Malformed X-Matrix authorization") from exc


class ServerKeys:
    """Homeservers' federation verify keys, fetched and cached."""

    def __init__(
        self, outbound: OutboundClient, overrides: dict[str, str], clock: Clock
    ) -> None:
        self._outbound = outbound
        self._overrides = overrides
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[VerifyKey, int]] = {}
        self._lock = threading.Lock()

    def verify_key(self, server_name: str, key_id: str) -> VerifyKey:
        """The key ``server_name`` publishes as ``key_id``; FetcherError if none."""
        now = self._clock()
        with self._lock:
            cached = self._cache.get((server_name, key_id))
        if cached is not None and cached[1] > now:
            return cached[0]

        keys, valid_until = self._fetch(server_name)
        if key_id not in keys:
            raise FetcherError(f"{server_name} publishes no key {key_id}")
        with self._lock:
            for kid, key in keys.items():
                self._cache[(server_name, kid)] = (key, valid_until)
        return keys[key_id]

    def _fetch(self, server_name: str) -> tuple[dict[str, VerifyKey], int]:
        base = self._outbound.resolve_homeserver(server_name, self._overrides)
        answer = self._outbound.get_json(f"{base}{KEY_PATH}")
        if not isinstance(answer, dict) or answer.get("server_name") != server_name:
            raise FetcherError(f"{server_name}: key answer names another server")
        keys = _verify_keys(answer.get("verify_keys"))
        # The answer must be signed by the keys it lists (self-signed).
        # signedjson indexes the signatures as it finds them: check the shape.
        signatures = answer.get("signatures")
        if not isinstance(signatures, dict) or not isinstance(
            signatures.get(server_name), dict
        ):
            raise FetcherError(f"{server_name}: key answer not self-signed")
        for key in keys.values():
            try:
                signedjson.sign.verify_signed_json(answer, server_name, key)
            except signedjson.sign.SignatureVerifyException as exc:
                raise FetcherError(
                    f"{server_name}: key answer not self-signed"
                ) from exc
        valid_until = answer.get("valid_until_ts")
        now = self._clock()
        if not isinstance(valid_until, int) or valid_until <= now:
            raise FetcherError(f"{server_name}: keys expired or without validity")
        return keys, min(valid_until, now + KEY_CACHE_MS)


def _verify_keys(raw: Any) -> dict[str, VerifyKey]:
    if not isinstance(raw, dict) or not raw:
        raise FetcherError("key answer has no verify_keys")
    keys = {}
    for key_id, entry in raw.items():
        if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
            continue  # only ed25519 exists today; skip what we cannot use
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise FetcherError(f"key {key_id} is malformed")
        try:
            keys[key_id] = signedjson.key.decode_verify_key_bytes(
                key_id, decode_base64(entry["key"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FetcherError(f"key {key_id} is malformed") from exc
    if not keys:
        raise FetcherError("key answer has no ed25519 key")
    return keys


class ServerAuth:
    """Checks X-Matrix signatures of requests made to us."""

    def __init__(self, keys: ServerKeys, our_names: Sequence[str]) -> None:
        self._keys = keys
        self._names = tuple(dict.fromkeys(our_names))

    def verify(
        self, header: str, method: str, uri: str, content: dict[str, Any]
    ) -> str:
        """The origin server that signed this request.

        Raises:
            Forbidden: the signature is missing, malformed, or does not verify.
        """
        auth = parse_x_matrix(header)
        try:
            key = self._keys.verify_key(auth.origin, auth.key_id)
        except FetcherError as exc:
            logger.warning("signing key not found origin=%s: %s", auth.origin, exc)
            raise Forbidden("Could not fetch the homeserver's signing key") from exc
        for signed in self._candidates(auth, method, uri, content):
            try:
                signedjson.sign.verify_signed_json(signed, auth.origin, key)
            except signedjson.sign.SignatureVerifyException:
                continue
            return auth.origin
        logger.warning("request signature refused origin=%s", auth.origin)
        raise Forbidden("Invalid homeserver signature")

    def _candidates(
        self, auth: XMatrix, method: str, uri: str, content: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """The objects the origin may have signed: Synapse names us in
        ``destination_is`` (the identity server's host as it knows it) when
        it sends no ``destination``; newer senders name ``destination``."""
        base = {"method": method, "uri": uri, "origin": auth.origin, "content": content}
        signatures = {auth.origin: {auth.key_id: auth.signature}}
        if auth.destination is not None:
            if auth.destination not in self._names:
                return []
            return [{**base, "destination": auth.destination, "signatures": signatures}]
        return [
            {**base, "destination_is": name, "signatures": signatures}
            for name in self._names
        ]


def our_names(server_name: str, public_url: str) -> list[str]:
    """Names a homeserver may know us by: our public URL's host, server.name."""
    netloc = urllib.parse.urlsplit(public_url).netloc
    return [n for n in (netloc, netloc.rsplit(":", 1)[0], server_name) if n]
