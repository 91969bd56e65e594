"""Our public keys and signed associations."""

from __future__ import annotations

from typing import Any

from signedjson.types import SigningKey

from mxisd_flask.crypto.keys import KEY_ID, public_key_b64, sign_json
from mxisd_flask.services.clock import Clock
from mxisd_flask.storage.db import Database
from mxisd_flask.storage.invites import InviteStorage

# Sydent and mxisd both hand out associations valid for a century: a binding
# is revoked by unbind, not by expiry.
ASSOCIATION_VALIDITY_MS = 100 * 365 * 24 * 3600 * 1000


class KeyService:
    def __init__(
        self,
        signing_key: SigningKey,
        server_name: str,
        public_url: str,
        db: Database,
        clock: Clock,
    ) -> None:
        self._key = signing_key
        self.server_name = server_name
        self._public_url = public_url
        self._db = db
        self._clock = clock
        self._invites = InviteStorage()
        self.public_key = public_key_b64(signing_key)

    def pubkey(self, key_id: str) -> str | None:
        return self.public_key if key_id == KEY_ID else None

    def is_valid(self, public_key: str) -> bool:
        return public_key == self.public_key

    def ephemeral_is_valid(self, public_key: str) -> bool:
        with self._db.read() as cur:
            return self._invites.ephemeral_key_exists(cur, public_key)

    def key_validity_url(self, ephemeral: bool = False) -> str:
        path = "pubkey/ephemeral/isvalid" if ephemeral else "pubkey/isvalid"
        return f"{self._public_url}/_matrix/identity/v2/{path}"

    def now(self) -> int:
        """The time signed associations are dated with, in ms."""
        return self._clock()

    def sign(self, obj: dict[str, Any]) -> dict[str, Any]:
        return sign_json(obj, self.server_name, self._key)

    def association(
        self, medium: str, address: str, mxid: str, verified_ts: int | None = None
    ) -> dict[str, Any]:
        """A signed 3PID association, as bind and v1 lookup return it, dated
        ``verified_ts`` (when the 3PID was verified; now if not given)."""
        ts = self.now() if verified_ts is None else verified_ts
        return self.sign(
            {
                "address": address,
                "medium": medium,
                "mxid": mxid,
                "not_before": ts,
                "not_after": ts + ASSOCIATION_VALIDITY_MS,
                "ts": ts,
            }
        )
