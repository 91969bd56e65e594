"""Binding a validated 3PID to an mxid, and removing that binding."""

from __future__ import annotations

import logging
from typing import Any

from mxisd_flask.crypto.hashing import lookup_hash
from mxisd_flask.errors import (
    EmailSendError,
    Forbidden,
    MatrixError,
    SendError,
    Unauthorized,
)
from mxisd_flask.model import check_mxid, normalise_address, redact
from mxisd_flask.services.clock import Clock
from mxisd_flask.services.keys import KeyService
from mxisd_flask.services.notifications import NotificationService
from mxisd_flask.services.onbind import OnbindService
from mxisd_flask.services.pepper import PepperService
from mxisd_flask.services.sessions import SessionService
from mxisd_flask.storage.bindings import BindingStorage
from mxisd_flask.storage.db import Database

logger = logging.getLogger(__name__)


class BindService:
    def __init__(
        self,
        db: Database,
        sessions: SessionService,
        keys: KeyService,
        pepper: PepperService,
        clock: Clock,
        onbind: OnbindService | None = None,
        fraud_warnings: NotificationService | None = None,
    ) -> None:
        """``fraud_warnings``: where to warn a 3PID's owner of an unbind
        without proof (session.policy.unbind.fraudulent.sendWarning)."""
        self._db = db
        self._fraud_warnings = fraud_warnings
        self._onbind = onbind
        self._sessions = sessions
        self._keys = keys
        self._pepper = pepper
        self._clock = clock
        self._storage = BindingStorage()

    def bind(
        self, sid: str, client_secret: str, mxid: str, caller: str | None
    ) -> dict[str, Any]:
        """Bind the session's 3PID to ``mxid``; returns the signed association.

        ``caller`` is the v2 token owner; v2 may only bind the caller's own mxid.
        """
        check_mxid(mxid)
        if caller is not None and caller != mxid:
            raise Unauthorized("You may only bind 3PIDs to your own Matrix ID")
        threepid = self._sessions.validated_threepid(sid, client_secret)

        now = self._clock()
        with self._db.write() as cur:
            pepper = self._pepper.pepper_for_write(cur)
            hashed = lookup_hash(threepid.address, threepid.medium, pepper)
            self._storage.upsert(
                cur, threepid.medium, threepid.address, mxid, hashed, now
            )
            # In the same transaction: a bind never commits without its invites.
            queued = self._onbind is not None and self._onbind.record_bound(
                cur, threepid.medium, threepid.address, mxid
            )
        logger.info("bind mxid=%s medium=%s sid=%s", mxid, threepid.medium, sid)
        if queued and self._onbind is not None:
            self._onbind.on_queued()
        # Dated as the binding is: a v1 lookup answers this same association.
        return self._keys.association(threepid.medium, threepid.address, mxid, now)

    def unbind(
        self,
        sid: str | None,
        client_secret: str | None,
        mxid: str,
        medium: str,
        address: str,
        caller: str | None,
    ) -> None:
        """Remove a binding proven by a validated session of the same 3PID."""
        check_mxid(mxid)
        if caller is not None and caller != mxid:
            raise Unauthorized("You may only unbind 3PIDs from your own Matrix ID")
        if sid is None or client_secret is None:
            raise Forbidden(
                "Unbind requires sid and client_secret, or a homeserver's signature"
            )
        address = normalise_address(medium, address)
        self._prove_or_warn(sid, client_secret, mxid, medium, address)

        with self._db.write() as cur:
            removed = self._storage.delete(cur, medium, address, mxid)
        if removed:
            logger.info("unbind mxid=%s medium=%s sid=%s", mxid, medium, sid)

    def _prove_or_warn(
        self, sid: str, client_secret: str, mxid: str, medium: str, address: str
    ) -> None:
        """Check the session proves (medium, address); if not, warn its owner."""
        try:
            threepid = self._sessions.validated_threepid(sid, client_secret)
            if (threepid.medium, threepid.address) != (medium, address):
                raise Forbidden("The session does not prove ownership of this 3PID")
        except MatrixError:
            self._warn_owner(mxid, medium, address)
            raise

    def _warn_owner(self, mxid: str, medium: str, address: str) -> None:
        if self._fraud_warnings is None:
            return
        with self._db.read() as cur:
            bound = self._storage.get(cur, medium, address)
        if bound is None:
            # Nobody to warn; and unbind must not mail any address one names.
            return

        logger.warning(
            "unbind without proof of ownership mxid=%s to=%s",
            mxid,
            redact(medium, address),
        )
        try:
            self._fraud_warnings.send_fraudulent_unbind_warning(medium, address, mxid)
        except (EmailSendError, SendError):
            # Logged by the notification service; the caller still gets the
            # refusal of the unbind, not a send error.
            return

    def unbind_by_homeserver(
        self, origin: str, mxid: str, medium: str, address: str
    ) -> None:
        """Remove a binding at the request of the mxid's own homeserver,
        ``origin`` (whose signature the caller checked)."""
        check_mxid(mxid)
        if mxid.split(":", 1)[1].lower() != origin.lower():
            raise Forbidden("Only the user's own homeserver may unbind for them")
        address = normalise_address(medium, address)

        with self._db.write() as cur:
            removed = self._storage.delete(cur, medium, address, mxid)
        if removed:
            logger.info("unbind mxid=%s medium=%s by=%s", mxid, medium, origin)
