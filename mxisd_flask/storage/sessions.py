"""Validation sessions (3PID ownership proofs) that we keep."""

from __future__ import annotations

from dataclasses import dataclass

from mxisd_flask.storage.db import Cursor


@dataclass(frozen=True)
class ValidationSession:
    sid: str
    client_secret: str
    medium: str
    address: str
    token: str
    send_attempt: int
    next_link: str | None
    validated_ts: int | None
    created_ts: int
    last_ts: int


_COLUMNS = (
    "sid, client_secret, medium, address, token, send_attempt, next_link, "
    "validated_ts, created_ts, last_ts"
)


class SessionStorage:
    def get(self, cur: Cursor, sid: str) -> ValidationSession | None:
        cur.execute(f"SELECT {_COLUMNS} FROM sessions WHERE sid = ?", (sid,))
        row = cur.fetchone()
        return ValidationSession(*row) if row else None

    def find(
        self, cur: Cursor, client_secret: str, medium: str, address: str
    ) -> ValidationSession | None:
        cur.execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE client_secret = ? "
            "AND medium = ? AND address = ? ORDER BY created_ts DESC",
            (client_secret, medium, address),
        )
        row = cur.fetchone()
        return ValidationSession(*row) if row else None

    def insert(self, cur: Cursor, s: ValidationSession) -> None:
        cur.execute(
            f"INSERT INTO sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                s.sid,
                s.client_secret,
                s.medium,
                s.address,
                s.token,
                s.send_attempt,
                s.next_link,
                s.validated_ts,
                s.created_ts,
                s.last_ts,
            ),
        )

    def set_attempt(
        self,
        cur: Cursor,
        sid: str,
        send_attempt: int,
        now_ms: int,
        only_if: int | None = None,
    ) -> None:
        """Record a send_attempt (only if the session is at ``only_if``)."""
        sql = "UPDATE sessions SET send_attempt = ?, last_ts = ? WHERE sid = ?"
        params: tuple[object, ...] = (send_attempt, now_ms, sid)
        if only_if is not None:
            sql += " AND send_attempt = ?"
            params += (only_if,)
        cur.execute(sql, params)

    def set_token(self, cur: Cursor, sid: str, token: str, send_attempt: int) -> None:
        """The token of a sent attempt, unless a later attempt took over."""
        cur.execute(
            "UPDATE sessions SET token = ?, failed_submits = 0 "
            "WHERE sid = ? AND send_attempt = ?",
            (token, sid, send_attempt),
        )

    def delete_unsent(self, cur: Cursor, sid: str, send_attempt: int) -> None:
        """Drop a new session whose first message failed (if still at it)."""
        cur.execute(
            "DELETE FROM sessions WHERE sid = ? AND send_attempt = ?",
            (sid, send_attempt),
        )

    def mark_validated(self, cur: Cursor, sid: str, now_ms: int) -> None:
        cur.execute(
            "UPDATE sessions SET validated_ts = ?, last_ts = ? WHERE sid = ?",
            (now_ms, now_ms, sid),
        )

    def touch(self, cur: Cursor, sid: str, now_ms: int) -> None:
        cur.execute("UPDATE sessions SET last_ts = ? WHERE sid = ?", (now_ms, sid))

    def record_failed_submit(self, cur: Cursor, sid: str, limit: int) -> None:
        """Count a wrong token; at ``limit`` the token is void (emptied)."""
        cur.execute(
            "UPDATE sessions SET failed_submits = failed_submits + 1, "
            "token = CASE WHEN failed_submits + 1 >= ? THEN '' ELSE token END "
            "WHERE sid = ?",
            (limit, sid),
        )
