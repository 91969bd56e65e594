"""Pending invites: resolve them to an mxid, then tell the inviting homeserver.

An invite is resolved when its 3PID is bound on us (checked in the bind's own
transaction), when a store now answers a lookup for it (checked every
``invite.resolution.timer`` minutes), or when it expires
(``invite.expiration.*``: it then goes to the configured mxid). Each
resolution is a row in ``invite_deliveries``; workers claim due rows with a
lease, POST ``/_matrix/federation/v1/3pid/onbind`` to the inviter's
homeserver, and record the outcome. A failure is retried with exponential
back-off; a 4xx answer that a retry cannot change ends the retries.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mxisd_flask.errors import ConfigError, FetcherError, HttpStatusError, MatrixError
from mxisd_flask.model import check_mxid, redact
from mxisd_flask.outbound import OutboundClient
from mxisd_flask.services.clock import Clock
from mxisd_flask.services.keys import KeyService
from mxisd_flask.storage.db import Cursor, Database
from mxisd_flask.storage.deliveries import (
    DELIVERED,
    FAILED,
    PENDING,
    Delivery,
    DeliveryStorage,
)
from mxisd_flask.storage.invites import Invite, InviteStorage

logger = logging.getLogger(__name__)

ONBIND_PATH = "/_matrix/federation/v1/3pid/onbind"
FIRST_RETRY_MS = 30_000
MAX_RETRY_MS = 6 * 3600 * 1000
MAX_ATTEMPTS = 20
# A claim outlives any single request (outbound.timeout is seconds); a
# worker that died mid-delivery frees its rows when the lease ends.
CLAIM_LEASE_MS = 10 * 60 * 1000
BATCH = 50
# Answers a later retry may change: timeout and rate limit.
RETRYABLE_4XX = frozenset({408, 425, 429})

Lookup = Callable[[str, str], str | None]


@dataclass(frozen=True)
class InviteConfig:
    recursive: bool
    timer_ms: int
    expiration_enabled: bool
    expiration_after_ms: int
    resolve_to: str | None


def invite_config(values: Mapping[str, Any]) -> InviteConfig:
    timer = values["invite.resolution.timer"]
    if timer < 1:
        raise ConfigError("invite.resolution.timer: must be at least 1 (minutes)")
    after = values["invite.expiration.after"]
    if after < 1:
        raise ConfigError("invite.expiration.after: must be at least 1 (minutes)")
    enabled = values["invite.expiration.enabled"]
    resolve_to = values["invite.expiration.resolveTo"]
    if enabled and not resolve_to:
        raise ConfigError("invite.expiration.resolveTo: required when enabled")
    if resolve_to:
        try:
            check_mxid(resolve_to)
        except MatrixError as exc:
            raise ConfigError("invite.expiration.resolveTo: not a Matrix ID") from exc
    return InviteConfig(
        recursive=values["invite.resolution.recursive"],
        timer_ms=timer * 60_000,
        expiration_enabled=enabled,
        expiration_after_ms=after * 60_000,
        resolve_to=resolve_to,
    )


def retry_delay_ms(attempts: int) -> int:
    """Back-off after ``attempts`` failed attempts: 30 s, 1 min, ... 6 h."""
    return int(min(FIRST_RETRY_MS * 2 ** max(attempts - 1, 0), MAX_RETRY_MS))


class OnbindService:
    def __init__(
        self,
        db: Database,
        lookups: tuple[Lookup, Lookup],
        keys: KeyService,
        outbound: OutboundClient,
        federation_overrides: dict[str, str],
        config: InviteConfig,
        clock: Clock,
    ) -> None:
        """``lookups`` are (recursive, local-only) 3PID lookups."""
        self._db = db
        self._lookup = lookups[0] if config.recursive else lookups[1]
        self._keys = keys
        self._outbound = outbound
        self._overrides = federation_overrides
        self._config = config
        self._clock = clock
        self._invites = InviteStorage()
        self._storage = DeliveryStorage()
        self._last_resolution_ms: int | None = None
        self.on_queued: Callable[[], None] = lambda: None

    def record_bound(self, cur: Cursor, medium: str, address: str, mxid: str) -> int:
        """In a bind's transaction: resolve the 3PID's pending invites to mxid."""
        tokens = self._storage.unresolved_for_threepid(cur, medium, address)
        return sum(self._record(cur, token, mxid, "bind") for token in tokens)

    def _record(self, cur: Cursor, token: str, mxid: str, reason: str) -> bool:
        invite = self._invites.by_token(cur, token)
        if invite is None:
            return False
        server_name = invite.sender.split(":", 1)[1]
        recorded = self._storage.insert(
            cur, token, server_name, mxid, reason, self._clock()
        )
        if recorded:
            logger.info(
                "invite resolved room_id=%s mxid=%s reason=%s",
                invite.room_id,
                mxid,
                reason,
            )
        return recorded

    def run_once(self) -> None:
        """One pass: resolve pending invites when the timer is due, deliver."""
        now = self._clock()
        last = self._last_resolution_ms
        if last is None or now - last >= self._config.timer_ms:
            self._last_resolution_ms = now
            self.resolve_pending()
        self.deliver_due()

    def resolve_pending(self) -> int:
        """Ask the lookup chain (and the expiry) about every pending invite."""
        with self._db.read() as cur:
            tokens = self._storage.unresolved_tokens(cur)
            invites = [i for t in tokens if (i := self._invites.by_token(cur, t))]
        resolved = 0
        for invite in invites:
            target = self._resolution(invite)
            if target is None:
                continue
            with self._db.write() as cur:
                resolved += self._record(cur, invite.token, *target)
        if resolved:
            self.on_queued()
        return resolved

    def _resolution(self, invite: Invite) -> tuple[str, str] | None:
        mxid = self._lookup(invite.medium, invite.address)
        if mxid is not None:
            return mxid, "lookup"
        age = self._clock() - invite.created_ts
        expiry = self._config
        if expiry.expiration_enabled and age >= expiry.expiration_after_ms:
            assert expiry.resolve_to is not None  # checked by invite_config
            return expiry.resolve_to, "expired"
        return None

    def deliver_due(self) -> int:
        """Claim due deliveries and send each; returns how many were delivered."""
        worker = uuid.uuid4().hex
        with self._db.write() as cur:
            claimed = self._storage.claim(
                cur, worker, self._clock(), CLAIM_LEASE_MS, BATCH
            )
        delivered = 0
        for delivery in claimed:
            delivered += self._deliver(delivery, worker)
        return delivered

    def _deliver(self, delivery: Delivery, worker: str) -> bool:
        with self._db.read() as cur:
            invite = self._invites.by_token(cur, delivery.token)
        state, next_ts, error = DELIVERED, self._clock(), None
        if invite is None:
            state, error = FAILED, "the invite is no longer stored"
        else:
            try:
                self._post(delivery, invite)
            except FetcherError as exc:
                state, next_ts, error = self._after_failure(delivery, exc)
                logger.warning(
                    "onbind failed server_name=%s room_id=%s to=%s attempts=%d "
                    "state=%s: %s",
                    delivery.server_name,
                    invite.room_id,
                    redact(invite.medium, invite.address),
                    delivery.attempts + 1,
                    state,
                    exc,
                )
        with self._db.write() as cur:
            self._storage.finish(
                cur, delivery, worker, state, next_ts, error, self._clock()
            )
        if state == DELIVERED:
            logger.info(
                "onbind delivered server_name=%s mxid=%s",
                delivery.server_name,
                delivery.mxid,
            )
        return state == DELIVERED

    def _after_failure(
        self, delivery: Delivery, exc: FetcherError
    ) -> tuple[str, int, str]:
        attempts = delivery.attempts + 1
        final = (
            isinstance(exc, HttpStatusError)
            and 400 <= exc.status < 500
            and exc.status not in RETRYABLE_4XX
        )
        if final or attempts >= MAX_ATTEMPTS:
            return FAILED, self._clock(), str(exc)
        return PENDING, self._clock() + retry_delay_ms(attempts), str(exc)

    def _post(self, delivery: Delivery, invite: Invite) -> None:
        base = self._outbound.resolve_homeserver(delivery.server_name, self._overrides)
        self._outbound.request_json(
            "POST", f"{base}{ONBIND_PATH}", json=self.onbind_body(delivery, invite)
        )

    def onbind_body(self, delivery: Delivery, invite: Invite) -> dict[str, Any]:
        """The spec's onbind body for one invite, its ``signed`` part ours."""
        signed = self._keys.sign({"mxid": delivery.mxid, "token": invite.token})
        return {
            "medium": invite.medium,
            "address": invite.address,
            "mxid": delivery.mxid,
            "invites": [
                {
                    "medium": invite.medium,
                    "address": invite.address,
                    "mxid": delivery.mxid,
                    "room_id": invite.room_id,
                    "sender": invite.sender,
                    "token": invite.token,
                    "signed": signed,
                }
            ],
        }

    def delivery(self, token: str) -> Delivery | None:
        """The delivery state of one invite (None while it is unresolved)."""
        with self._db.read() as cur:
            return self._storage.get(cur, token)

    def deliveries(self) -> list[Delivery]:
        with self._db.read() as cur:
            return self._storage.all(cur)
