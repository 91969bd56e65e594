"""Pending 3PID invites and their ephemeral keys."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mxisd_flask.storage.db import Cursor


@dataclass(frozen=True)
class Invite:
    token: str
    medium: str
    address: str
    room_id: str
    sender: str
    ephemeral_public_key: str
    ephemeral_private_key: str
    extra: dict[str, Any]
    created_ts: int


_COLUMNS = (
    "token, medium, address, room_id, sender, ephemeral_public_key, "
    "ephemeral_private_key, extra, created_ts"
)


def _invite(row: Any) -> Invite:
    token, medium, address, room_id, sender, public, private, extra, ts = row
    return Invite(
        token, medium, address, room_id, sender, public, private, json.loads(extra), ts
    )


class InviteStorage:
    def insert(self, cur: Cursor, invite: Invite) -> None:
        cur.execute(
            "INSERT INTO invites (token, medium, address, room_id, sender, "
            "ephemeral_public_key, ephemeral_private_key, extra, created_ts) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                invite.token,
                invite.medium,
                invite.address,
                invite.room_id,
                invite.sender,
                invite.ephemeral_public_key,
                invite.ephemeral_private_key,
                json.dumps(invite.extra),
                invite.created_ts,
            ),
        )

    def for_threepid(self, cur: Cursor, medium: str, address: str) -> list[Invite]:
        cur.execute(
            f"SELECT {_COLUMNS} FROM invites WHERE medium = ? AND address = ? "
            "ORDER BY created_ts",
            (medium, address),
        )
        return [_invite(row) for row in cur.fetchall()]

    def by_token(self, cur: Cursor, token: str) -> Invite | None:
        cur.execute(f"SELECT {_COLUMNS} FROM invites WHERE token = ?", (token,))
        row = cur.fetchone()
        return _invite(row) if row else None

    def ephemeral_key_exists(self, cur: Cursor, public_key: str) -> bool:
        cur.execute(
            "SELECT 1 FROM invites WHERE ephemeral_public_key = ?", (public_key,)
        )
        return cur.fetchone() is not None
