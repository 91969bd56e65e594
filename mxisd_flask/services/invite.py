"""store-invite and sign-ed25519: pending invites for unbound 3PIDs."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import signedjson.key
import signedjson.sign
from nacl.signing import SigningKey
from unpaddedbase64 import encode_base64

from mxisd_flask.errors import (
    InvalidParam,
    ThreePidInUse,
    Unrecognized,
    UnsupportedMedium,
)
from mxisd_flask.model import check_mxid, check_room_id, normalise_address, redact
from mxisd_flask.services.clock import Clock
from mxisd_flask.services.keys import KeyService
from mxisd_flask.services.lookup import LookupChain
from mxisd_flask.services.notifications import INVITE, NotificationService
from mxisd_flask.storage.db import Database
from mxisd_flask.storage.invites import Invite, InviteStorage

logger = logging.getLogger(__name__)

# Optional store-invite fields -> the template placeholder that carries them.
OPTIONAL_FIELDS = {
    "room_alias": "ROOM_ALIAS",
    "room_avatar_url": "ROOM_AVATAR_URL",
    "room_join_rules": "ROOM_JOIN_RULES",
    "room_name": "ROOM_NAME",
    "room_type": "ROOM_TYPE",
    "sender_display_name": "SENDER_NAME",
    "sender_avatar_url": "SENDER_AVATAR_URL",
}


class InviteService:
    def __init__(
        self,
        db: Database,
        chain: LookupChain,
        keys: KeyService,
        notifications: NotificationService,
        clock: Clock,
    ) -> None:
        self._db = db
        self._chain = chain
        self._keys = keys
        self._notifications = notifications
        self._clock = clock
        self._storage = InviteStorage()

    def store_invite(
        self,
        medium: str,
        address: str,
        room_id: str,
        sender: str,
        extra: dict[str, str],
    ) -> dict[str, Any]:
        """Persist an invite, mail it, and answer with token and public keys."""
        if medium not in ("email", "msisdn"):
            raise UnsupportedMedium("Only email and msisdn invites are supported")
        address = normalise_address(medium, address)
        check_mxid(sender, "sender")
        check_room_id(room_id)
        mxid = self._chain.lookup(medium, address)
        if mxid is not None:
            raise ThreePidInUse("This 3PID is already bound to a Matrix ID", mxid=mxid)

        token = secrets.token_urlsafe(32)
        ephemeral = SigningKey.generate()
        invite = Invite(
            token=token,
            medium=medium,
            address=address,
            room_id=room_id,
            sender=sender,
            ephemeral_public_key=encode_base64(bytes(ephemeral.verify_key)),
            ephemeral_private_key=encode_base64(bytes(ephemeral)),
            extra=extra,
            created_ts=self._clock(),
        )
        self._notifications.notify(INVITE, medium, address, self._placeholders(invite))
        with self._db.write() as cur:
            self._storage.insert(cur, invite)
        logger.info(
            "invite stored room_id=%s sender=%s to=%s",
            room_id,
            sender,
            redact(medium, address),
        )
        return {
            "token": token,
            "display_name": redact_display_name(medium, address),
            "public_keys": [
                {
                    "public_key": self._keys.public_key,
                    "key_validity_url": self._keys.key_validity_url(),
                },
                {
                    "public_key": invite.ephemeral_public_key,
                    "key_validity_url": self._keys.key_validity_url(ephemeral=True),
                },
            ],
        }

    def _placeholders(self, invite: Invite) -> dict[str, str]:
        values = {
            name: invite.extra.get(field, "") for field, name in OPTIONAL_FIELDS.items()
        }
        values.update(
            {
                "INVITE_MEDIUM": invite.medium,
                "INVITE_ADDRESS": invite.address,
                "INVITE_TOKEN": invite.token,
                "ROOM_ID": invite.room_id,
                "ROOM_NAME_OR_ID": values["ROOM_NAME"] or invite.room_id,
                "SENDER_ID": invite.sender,
                "SENDER_NAME_OR_ID": values["SENDER_NAME"] or invite.sender,
            }
        )
        return values

    def sign_ed25519(self, mxid: str, token: str, private_key: str) -> dict[str, Any]:
        """Sign {mxid, sender, token} of a stored invite with its ephemeral key."""
        check_mxid(mxid)
        try:
            key = signedjson.key.decode_signing_key_base64("ed25519", "0", private_key)
        except (ValueError, TypeError) as exc:
            raise InvalidParam("Invalid private_key") from exc
        with self._db.read() as cur:
            invite = self._storage.by_token(cur, token)
        if invite is None:
            raise Unrecognized("Unknown invite token")
        signed: dict[str, Any] = signedjson.sign.sign_json(
            {"mxid": mxid, "sender": invite.sender, "token": token},
            self._keys.server_name,
            key,
        )
        return signed


def redact_display_name(medium: str, address: str) -> str:
    """What the inviter's room shows instead of the invitee's full address."""
    if medium == "msisdn":
        return f"+{address[:3]}...{address[-2:]}"
    local, _, domain = address.rpartition("@")
    return f"{local[:3]}...@{domain[:3]}..."
