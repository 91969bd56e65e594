"""Identity server accounts (v2): OpenID registration, tokens, terms."""

from __future__ import annotations

import logging
import secrets
import time
import urllib.parse
from typing import Any

from mxisd_flask.config.sections import Policy
from mxisd_flask.errors import (
    FetcherError,
    TermsNotSigned,
    Unauthorized,
    UnknownToken,
)
from mxisd_flask.model import check_server_name
from mxisd_flask.outbound import OutboundClient
from mxisd_flask.services.clock import Clock
from mxisd_flask.storage.accounts import AccountStorage
from mxisd_flask.storage.counter import ACCOUNTS, TRUST_SECONDS, Stamp
from mxisd_flask.storage.db import Database

logger = logging.getLogger(__name__)

# Tokens a process remembers having found (SQLite only); all are forgotten
# at any logout, and when this many are remembered; each for TRUST_SECONDS
# at most.
REMEMBERED_TOKENS = 10_000


class AccountService:
    def __init__(
        self,
        db: Database,
        outbound: OutboundClient,
        federation_overrides: dict[str, str],
        clock: Clock,
    ) -> None:
        self._db = db
        self._outbound = outbound
        self._overrides = federation_overrides
        self._clock = clock
        self._storage = AccountStorage()
        # token -> (user_id, the logout count it was found at, when)
        self._remembered: dict[str, tuple[str, Stamp, float]] = {}

    def register(self, openid_token: str, server_name: str) -> str:
        """Check an OpenID token with its homeserver; returns our access token."""
        check_server_name(server_name)
        try:
            base = self._outbound.resolve_homeserver(server_name, self._overrides)
            query = urllib.parse.urlencode({"access_token": openid_token})
            answer = self._outbound.get_json(
                f"{base}/_matrix/federation/v1/openid/userinfo?{query}"
            )
        except FetcherError as exc:
            logger.warning("openid check failed server_name=%s: %s", server_name, exc)
            raise Unauthorized("The OpenID token could not be verified") from exc
        user_id = answer.get("sub") if isinstance(answer, dict) else None
        if not isinstance(user_id, str) or not user_id.endswith(":" + server_name):
            raise Unauthorized("The homeserver did not vouch for a user of its own")

        token = secrets.token_urlsafe(32)
        with self._db.write() as cur:
            self._storage.insert(cur, token, user_id, self._clock())
        logger.info("account registered user_id=%s", user_id)
        return token

    def user_for_token(self, token: str | None) -> str:
        """The token's owner. A token found before is not asked of SQLite
        again until some process logs a token out (storage/counter.py), for
        TRUST_SECONDS at most."""
        if not token:
            raise Unauthorized("Unrecognised access token")
        counters = self._db.change_counters
        logouts = None if counters is None else counters.read(ACCOUNTS)
        remembered = self._remembered.get(token)
        if (
            remembered is not None
            and remembered[1] == logouts
            and time.monotonic() - remembered[2] < TRUST_SECONDS
        ):
            return remembered[0]
        found_at = time.monotonic()
        with self._db.read() as cur:
            user_id = self._storage.user_for_token(cur, token)
        if user_id is None:
            raise Unauthorized("Unrecognised access token")
        # Remembered with the count read before the query: a logout counted
        # after it makes the entry stale for every later request, which
        # reads the count afresh.
        if logouts is not None:
            if len(self._remembered) >= REMEMBERED_TOKENS:
                self._remembered.clear()
            self._remembered[token] = (user_id, logouts, found_at)
        return user_id

    def logout(self, token: str | None) -> None:
        with self._db.write() as cur:
            if not token or self._storage.user_for_token(cur, token) is None:
                raise UnknownToken("Unrecognised access token")
            self._storage.delete_token(cur, token)
        # After the commit: every process forgets the tokens it remembers.
        counters = self._db.change_counters
        if counters is not None:
            counters.increment(ACCOUNTS)


class TermsService:
    def __init__(self, db: Database, policies: tuple[Policy, ...]) -> None:
        self._db = db
        self._policies = policies
        self._storage = AccountStorage()

    def terms(self) -> dict[str, Any]:
        return {
            "policies": {
                p.name: {"version": p.version, **p.terms} for p in self._policies
            }
        }

    def accept(self, user_id: str, urls: list[str]) -> None:
        known = {doc["url"] for p in self._policies for doc in p.terms.values()}
        with self._db.write() as cur:
            self._storage.accept(cur, user_id, [u for u in urls if u in known])

    def check(self, user_id: str, path: str) -> None:
        """Raise TermsNotSigned if a policy guarding ``path`` is not accepted."""
        if not self._policies:
            return
        guarding = [
            p
            for p in self._policies
            if not p.regexps or any(r.search(path) for r in p.regexps)
        ]
        if not guarding:
            return
        with self._db.read() as cur:
            accepted = self._storage.accepted_urls(cur, user_id)
        for policy in guarding:
            # Accepting the document in any one language accepts the policy.
            if not {doc["url"] for doc in policy.terms.values()} & accepted:
                raise TermsNotSigned("Please accept our updated terms of service")
