"""Onbind deliveries: one row per resolved invite, with its retry state.

A row exists once an invite's 3PID resolved to an mxid (or the invite
expired). Workers claim due rows with a lease before calling the homeserver,
so two processes on one database never deliver the same invite at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mxisd_flask.storage.db import Cursor

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"


@dataclass(frozen=True)
class Delivery:
    token: str
    server_name: str
    mxid: str
    reason: str  # "bind", "lookup" or "expired"
    state: str
    attempts: int
    next_ts: int
    last_error: str | None
    resolved_ts: int
    updated_ts: int


@dataclass(frozen=True)
class InviteState:
    """A stored invite (without its token and keys) and how it was resolved."""

    medium: str
    address: str
    room_id: str
    sender: str
    created_ts: int
    delivery: Delivery | None  # None while the invite is unresolved


_COLUMNS = (
    "token, server_name, mxid, reason, state, attempts, next_ts, last_error, "
    "resolved_ts, updated_ts"
)


def _delivery(row: Any) -> Delivery:
    token, server, mxid, reason, state, attempts, next_ts, error, res, upd = row
    return Delivery(
        str(token),
        str(server),
        str(mxid),
        str(reason),
        str(state),
        int(attempts),
        int(next_ts),
        error,
        int(res),
        int(upd),
    )


class DeliveryStorage:
    def unresolved_tokens(self, cur: Cursor, limit: int = 500) -> list[str]:
        """Tokens of stored invites that no delivery row resolves yet."""
        cur.execute(
            "SELECT i.token FROM invites i WHERE NOT EXISTS "
            "(SELECT 1 FROM invite_deliveries d WHERE d.token = i.token) "
            "ORDER BY i.created_ts LIMIT ?",
            (limit,),
        )
        return [str(row[0]) for row in cur.fetchall()]

    def unresolved_for_threepid(
        self, cur: Cursor, medium: str, address: str
    ) -> list[str]:
        cur.execute(
            "SELECT i.token FROM invites i WHERE i.medium = ? AND i.address = ? "
            "AND NOT EXISTS "
            "(SELECT 1 FROM invite_deliveries d WHERE d.token = i.token)",
            (medium, address),
        )
        return [str(row[0]) for row in cur.fetchall()]

    def insert(
        self,
        cur: Cursor,
        token: str,
        server_name: str,
        mxid: str,
        reason: str,
        now_ms: int,
    ) -> bool:
        """Record a resolution; False when the invite was resolved already."""
        cur.execute(
            "INSERT INTO invite_deliveries (token, server_name, mxid, reason, "
            "state, attempts, next_ts, resolved_ts, updated_ts) "
            "VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?) ON CONFLICT (token) DO NOTHING",
            (token, server_name, mxid, reason, PENDING, now_ms, now_ms, now_ms),
        )
        return cur.rowcount > 0

    def claim(
        self, cur: Cursor, worker: str, now_ms: int, lease_ms: int, limit: int
    ) -> list[Delivery]:
        """Claim up to ``limit`` due rows for ``worker`` until now + lease.

        The conditions are repeated outside the subquery: PostgreSQL re-checks
        them on a row another transaction just claimed, and skips it.
        """
        due = "state = ? AND next_ts <= ? AND (claim_until IS NULL OR claim_until < ?)"
        cur.execute(
            "UPDATE invite_deliveries SET claimed_by = ?, claim_until = ? "
            f"WHERE {due} AND token IN (SELECT token FROM invite_deliveries "
            f"WHERE {due} ORDER BY next_ts LIMIT ?)",
            (
                worker,
                now_ms + lease_ms,
                *(PENDING, now_ms, now_ms),
                *(PENDING, now_ms, now_ms),
                limit,
            ),
        )
        cur.execute(
            f"SELECT {_COLUMNS} FROM invite_deliveries "
            "WHERE claimed_by = ? AND claim_until = ? AND state = ?",
            (worker, now_ms + lease_ms, PENDING),
        )
        return [_delivery(row) for row in cur.fetchall()]

    def finish(
        self,
        cur: Cursor,
        delivery: Delivery,
        worker: str,
        state: str,
        next_ts: int,
        error: str | None,
        now_ms: int,
    ) -> None:
        """Record an attempt's outcome and release the claim."""
        cur.execute(
            "UPDATE invite_deliveries SET state = ?, attempts = attempts + 1, "
            "next_ts = ?, last_error = ?, updated_ts = ?, claimed_by = NULL, "
            "claim_until = NULL WHERE token = ? AND claimed_by = ?",
            (state, next_ts, error, now_ms, delivery.token, worker),
        )

    def get(self, cur: Cursor, token: str) -> Delivery | None:
        cur.execute(
            f"SELECT {_COLUMNS} FROM invite_deliveries WHERE token = ?", (token,)
        )
        row = cur.fetchone()
        return _delivery(row) if row else None

    def all(self, cur: Cursor) -> list[Delivery]:
        cur.execute(f"SELECT {_COLUMNS} FROM invite_deliveries ORDER BY resolved_ts")
        return [_delivery(row) for row in cur.fetchall()]

    def invite_states(self, cur: Cursor) -> list[InviteState]:
        """Every stored invite, oldest first, with its delivery if resolved."""
        joined = ", ".join(f"d.{column}" for column in _COLUMNS.split(", "))
        cur.execute(
            "SELECT i.medium, i.address, i.room_id, i.sender, i.created_ts, "
            f"{joined} FROM invites i "
            "LEFT JOIN invite_deliveries d ON d.token = i.token "
            "ORDER BY i.created_ts"
        )
        return [
            InviteState(
                str(row[0]),
                str(row[1]),
                str(row[2]),
                str(row[3]),
                int(row[4]),
                None if row[5] is None else _delivery(row[5:]),
            )
            for row in cur.fetchall()
        ]
