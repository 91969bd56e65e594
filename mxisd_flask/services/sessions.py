"""3PID validation sessions: request a token, submit it, read the result."""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass

from mxisd_flask.errors import (
    Forbidden,
    InvalidParam,
    NoValidSession,
    SessionExpired,
    SessionNotValidated,
    TokenIncorrect,
)
from mxisd_flask.model import (
    check_client_secret,
    check_next_link,
    normalise_email,
    redact,
)
from mxisd_flask.services.clock import Clock
from mxisd_flask.services.notifications import NotificationService
from mxisd_flask.storage.db import Cursor, Database
from mxisd_flask.storage.sessions import SessionStorage, ValidationSession

logger = logging.getLogger(__name__)

MAX_SEND_ATTEMPT = 2**53


@dataclass(frozen=True)
class ValidatedThreePid:
    medium: str
    address: str
    validated_at: int


class SessionService:
    def __init__(
        self,
        db: Database,
        notifications: NotificationService,
        clock: Clock,
        ttl_s: int,
        enabled: bool,
    ) -> None:
        self._db = db
        self._notifications = notifications
        self._clock = clock
        self._ttl_ms = ttl_s * 1000
        self._enabled = enabled
        self._storage = SessionStorage()

    def request_email_token(
        self, client_secret: str, email: str, send_attempt: int, next_link: str | None
    ) -> str:
        """Create (or reuse) a session and mail its token; returns the sid.

        The mail is handed to the SMTP server before anything is stored, so a
        failed send leaves no session behind.
        """
        if not self._enabled:
            raise Forbidden("3PID validation sessions are disabled on this server")
        check_client_secret(client_secret)
        if not 0 <= send_attempt < MAX_SEND_ATTEMPT:
            raise InvalidParam("send_attempt is out of range")
        address = normalise_email(email)
        check_next_link(next_link)
        now = self._clock()

        with self._db.read() as cur:
            existing = self._storage.find(cur, client_secret, "email", address)
        if existing and self._expired(existing, now):
            existing = None
        if existing and send_attempt <= existing.send_attempt:
            return existing.sid

        sid = existing.sid if existing else secrets.token_urlsafe(16)
        token = existing.token if existing else secrets.token_urlsafe(24)
        self._notifications.send_validation(
            address, sid, client_secret, token, next_link or ""
        )
        with self._db.write() as cur:
            if existing:
                self._storage.resend(cur, sid, token, send_attempt, now)
            else:
                self._storage.insert(
                    cur,
                    ValidationSession(
                        sid,
                        client_secret,
                        "email",
                        address,
                        token,
                        send_attempt,
                        next_link,
                        None,
                        now,
                        now,
                    ),
                )
        logger.info("session created sid=%s to=%s", sid, redact("email", address))
        return sid

    def submit_token(
        self, sid: str, client_secret: str, token: str
    ) -> ValidationSession:
        """Validate a session; returns it (with its next_link) on success."""
        now = self._clock()
        with self._db.write() as cur:
            session = self._get(cur, sid, client_secret, now)
            if not hmac.compare_digest(session.token.encode(), token.encode()):
                raise TokenIncorrect("The token is incorrect")
            if session.validated_ts is None:
                self._storage.mark_validated(cur, sid, now)
                logger.info("session validated sid=%s medium=%s", sid, session.medium)
            else:
                self._storage.touch(cur, sid, now)
        return session

    def validated_threepid(self, sid: str, client_secret: str) -> ValidatedThreePid:
        now = self._clock()
        with self._db.read() as cur:
            session = self._get(cur, sid, client_secret, now)
        if session.validated_ts is None:
            raise SessionNotValidated("This validation session has not been validated")
        return ValidatedThreePid(session.medium, session.address, session.validated_ts)

    def _get(
        self, cur: Cursor, sid: str, client_secret: str, now: int
    ) -> ValidationSession:
        check_client_secret(client_secret)
        session = self._storage.get(cur, sid)
        if session is None or not hmac.compare_digest(
            session.client_secret.encode(), client_secret.encode()
        ):
            raise NoValidSession(
                "No valid session was found matching that sid and client secret"
            )
        if self._expired(session, now):
            raise SessionExpired("This validation session has expired")
        return session

    def _expired(self, session: ValidationSession, now: int) -> bool:
        return now - session.last_ts > self._ttl_ms
