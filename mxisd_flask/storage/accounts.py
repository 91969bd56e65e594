"""Accounts registered through OpenID, and the terms each user accepted."""

from __future__ import annotations

from collections.abc import Iterable

from mxisd_flask.storage.db import Cursor


class AccountStorage:
    def insert(self, cur: Cursor, token: str, user_id: str, now_ms: int) -> None:
        cur.execute(
            "INSERT INTO accounts (token, user_id, created_ts) VALUES (?, ?, ?)",
            (token, user_id, now_ms),
        )

    def user_for_token(self, cur: Cursor, token: str) -> str | None:
        cur.execute("SELECT user_id FROM accounts WHERE token = ?", (token,))
        row = cur.fetchone()
        return str(row[0]) if row else None

    def delete_token(self, cur: Cursor, token: str) -> None:
        cur.execute("DELETE FROM accounts WHERE token = ?", (token,))

    def accepted_urls(self, cur: Cursor, user_id: str) -> set[str]:
        cur.execute("SELECT url FROM accepted_terms WHERE user_id = ?", (user_id,))
        return {str(row[0]) for row in cur.fetchall()}

    def accept(self, cur: Cursor, user_id: str, urls: Iterable[str]) -> None:
        # ON CONFLICT rather than checking first: two requests of one user at
        # once both found nothing accepted, and the second failed on the key.
        cur.executemany(
            "INSERT INTO accepted_terms (user_id, url) VALUES (?, ?) "
            "ON CONFLICT (user_id, url) DO NOTHING",
            [(user_id, url) for url in sorted(set(urls))],
        )
