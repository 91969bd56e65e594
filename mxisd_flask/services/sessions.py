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
    ThreePid,
    check_client_secret,
    check_next_link,
    normalise_email,
    parse_msisdn,
    redact,
)
from mxisd_flask.services.clock import Clock
from mxisd_flask.services.notifications import NotificationService
from mxisd_flask.storage.db import Cursor, Database
from mxisd_flask.storage.sessions import SessionStorage, ValidationSession

logger = logging.getLogger(__name__)

MAX_SEND_ATTEMPT = 2**53
SMS_TOKEN_DIGITS = 6
# Wrong tokens a session takes before its token is void: a 6-digit code must
# not be guessable by trying. A new send_attempt sends a fresh token.
MAX_FAILED_SUBMITS = 5


@dataclass(frozen=True)
class _Claim:
    """A requestToken's hold on its session: ``send`` is False when that
    send_attempt was made already (answer with the sid, send nothing)."""

    sid: str
    previous: ValidationSession | None
    send: bool


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

    def request_token(
        self,
        medium: str,
        client_secret: str,
        address: str,
        send_attempt: int,
        next_link: str | None,
    ) -> str:
        """Create (or reuse) a session and send its token; returns the sid.

        ``address`` is already normalised. The send_attempt is recorded
        before the message goes, so the same request arriving meanwhile gets
        the same sid and sends nothing. The token is stored only once the
        message is handed to its transport, and a failed send takes the
        attempt back: its token can never validate.
        """
        if not self._enabled:
            raise Forbidden(
                "3PID validation sessions are disabled on this server "
                "(session.policy.validation.enabled is false)"
            )
        check_client_secret(client_secret)
        if not 0 <= send_attempt < MAX_SEND_ATTEMPT:
            raise InvalidParam("send_attempt is out of range")
        check_next_link(next_link)

        claim = self._claim(
            ThreePid(medium, address), client_secret, send_attempt, next_link
        )
        if not claim.send:
            return claim.sid

        token = self._token_for(medium, claim.previous)
        try:
            self._notifications.send_validation(
                medium, address, claim.sid, client_secret, token, next_link or ""
            )
        except BaseException:
            # Whatever failed, no message went out for this attempt.
            self._release(claim, send_attempt)
            raise
        with self._db.write() as cur:
            self._storage.set_token(cur, claim.sid, token, send_attempt)
        logger.info("session created sid=%s to=%s", claim.sid, redact(medium, address))
        return claim.sid

    def _claim(
        self,
        threepid: ThreePid,
        client_secret: str,
        send_attempt: int,
        next_link: str | None,
    ) -> _Claim:
        """Find the session and record this send_attempt, in one transaction."""
        medium, address = threepid.medium, threepid.address
        now = self._clock()
        with self._db.write() as cur:
            self._db.lock(cur, f"session {client_secret} {medium} {address}")
            existing = self._storage.find(cur, client_secret, medium, address)
            if existing and self._expired(existing, now):
                existing = None
            if existing and send_attempt <= existing.send_attempt:
                return _Claim(existing.sid, existing, send=False)
            if existing:
                self._storage.set_attempt(cur, existing.sid, send_attempt, now)
                return _Claim(existing.sid, existing, send=True)

            sid = secrets.token_urlsafe(16)
            # No token until the message is sent: nothing can match it.
            fresh = ValidationSession(
                sid,
                client_secret,
                medium,
                address,
                "",
                send_attempt,
                next_link,
                None,
                now,
                now,
            )
            self._storage.insert(cur, fresh)
        return _Claim(sid, None, send=True)

    def _release(self, claim: _Claim, send_attempt: int) -> None:
        """Take back a claimed attempt whose message was not sent, unless a
        later attempt has claimed the session since."""
        with self._db.write() as cur:
            if claim.previous is None:
                self._storage.delete_unsent(cur, claim.sid, send_attempt)
            else:
                self._storage.set_attempt(
                    cur,
                    claim.sid,
                    claim.previous.send_attempt,
                    claim.previous.last_ts,
                    only_if=send_attempt,
                )

    def request_email_token(
        self, client_secret: str, email: str, send_attempt: int, next_link: str | None
    ) -> str:
        """requestToken for an email address (checked and lower-cased)."""
        address = normalise_email(email)
        return self.request_token(
            "email", client_secret, address, send_attempt, next_link
        )

    def request_msisdn_token(
        self,
        client_secret: str,
        country: str,
        phone_number: str,
        send_attempt: int,
        next_link: str | None,
    ) -> str:
        """requestToken for a phone number, normalised to E.164 digits."""
        address = parse_msisdn(country, phone_number)
        return self.request_token(
            "msisdn", client_secret, address, send_attempt, next_link
        )

    def _token_for(self, medium: str, existing: ValidationSession | None) -> str:
        """A mail resend repeats its token, so an older mail's link still
        works; an SMS resend gets a fresh code, short codes living shortly."""
        if medium == "msisdn":
            return f"{secrets.randbelow(10**SMS_TOKEN_DIGITS):0{SMS_TOKEN_DIGITS}d}"
        if existing and existing.token:
            return existing.token
        return secrets.token_urlsafe(24)

    def submit_token(
        self, sid: str, client_secret: str, token: str
    ) -> ValidationSession:
        """Validate a session; returns it (with its next_link) on success."""
        now = self._clock()
        with self._db.write() as cur:
            session = self._get(cur, sid, client_secret, now)
            # An empty token was voided by too many wrong ones: nothing matches.
            correct = bool(session.token) and hmac.compare_digest(
                session.token.encode(), token.encode()
            )
            if not correct:
                self._storage.record_failed_submit(cur, sid, MAX_FAILED_SUBMITS)
            elif session.validated_ts is None:
                self._storage.mark_validated(cur, sid, now)
                logger.info("session validated sid=%s medium=%s", sid, session.medium)
            else:
                self._storage.touch(cur, sid, now)
        if not correct:
            raise TokenIncorrect("The token is incorrect")
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
