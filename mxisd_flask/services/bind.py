"""Binding a validated 3PID to an mxid, and removing that binding."""

from __future__ import annotations

import logging
from typing import Any

from mxisd_flask.crypto.hashing import lookup_hash
from mxisd_flask.errors import Forbidden, Unauthorized
from mxisd_flask.model import check_mxid, normalise_address
from mxisd_flask.services.clock import Clock
from mxisd_flask.services.keys import KeyService
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
    ) -> None:
        self._db = db
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

        with self._db.write() as cur:
            pepper = self._pepper.pepper_for_write(cur)
            hashed = lookup_hash(threepid.address, threepid.medium, pepper)
            self._storage.upsert(
                cur, threepid.medium, threepid.address, mxid, hashed, self._clock()
            )
            # In the same transaction: a bind never commits without its invites.
            queued = self._onbind is not None and self._onbind.record_bound(
                cur, threepid.medium, threepid.address, mxid
            )
        logger.info("bind mxid=%s medium=%s sid=%s", mxid, threepid.medium, sid)
        if queued and self._onbind is not None:
            self._onbind.on_queued()
        return self._keys.association(threepid.medium, threepid.address, mxid)

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
            # TODO(#4): accept homeserver-signed unbind requests (X-Matrix auth);
            # until then an unbind needs the sid and client_secret of a session.
            raise Forbidden("Unbind requires sid and client_secret on this server")
        address = normalise_address(medium, address)
        threepid = self._sessions.validated_threepid(sid, client_secret)
        if (threepid.medium, threepid.address) != (medium, address):
            raise Forbidden("The session does not prove ownership of this 3PID")

        with self._db.write() as cur:
            removed = self._storage.delete(cur, medium, address, mxid)
        if removed:
            logger.info("unbind mxid=%s medium=%s sid=%s", mxid, medium, sid)
