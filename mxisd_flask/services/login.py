"""Login through us: 3PID identifiers resolved to a user before the homeserver.

A client may log in with an email address (``m.id.thirdparty``, or the
legacy top-level ``medium``/``address``); the homeserver may not know that
address, our stores do. We resolve it through the lookup chain and forward
the login as an ``m.id.user`` login. ``auth.rewrite.user.rules`` do the same
for user names that are really 3PIDs (numeric employee IDs, say). Any other
login goes through untouched, and the homeserver's answer goes back as it
came.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mxisd_flask.errors import ConfigError, Forbidden, MatrixError
from mxisd_flask.model import normalise_address
from mxisd_flask.outbound import Relayed
from mxisd_flask.services.homeserver_client import HomeserverClient

logger = logging.getLogger(__name__)

RULES_KEY = "auth.rewrite.user.rules"
LEGACY_FIELDS = ("medium", "address", "user")
# Synapse's words for a refused password login: the client cannot tell an
# unknown address from a wrong password.
REFUSED = "Invalid username or password"

Lookup = Callable[[str, str], str | None]


@dataclass(frozen=True)
class RewriteRule:
    pattern: re.Pattern[str]
    medium: str


def rewrite_rules(values: Mapping[str, Any]) -> tuple[RewriteRule, ...]:
    rules = []
    for i, item in enumerate(values[RULES_KEY]):
        key = f"{RULES_KEY}[{i}]"
        if not isinstance(item, dict) or not all(
            isinstance(item.get(f), str) and item[f] for f in ("regex", "medium")
        ):
            raise ConfigError(f"{key}: needs regex and medium")
        try:
            rules.append(RewriteRule(re.compile(item["regex"]), item["medium"]))
        except re.error as exc:
            raise ConfigError(f"{key}.regex: invalid regular expression") from exc
    return tuple(rules)


@dataclass(frozen=True)
class LoginRequest:
    version: str
    host: str | None
    body: bytes
    headers: dict[str, str]  # what the homeserver should see of the client


class LoginService:
    def __init__(
        self,
        lookup: Lookup,
        homeserver: HomeserverClient,
        rules: tuple[RewriteRule, ...],
        domain: str,
    ) -> None:
        self._lookup = lookup
        self._homeserver = homeserver
        self._rules = rules
        self._domain = domain.lower()

    def flows(self, version: str, host: str | None, query: bytes) -> Relayed:
        """GET login: the homeserver's login flows, as they are."""
        suffix = f"?{query.decode('ascii', 'replace')}" if query else ""
        return self._homeserver.call(
            "GET", f"/_matrix/client/{version}/login{suffix}", host
        )

    def login(self, request: LoginRequest) -> Relayed:
        """Forward the login, rewritten to an ``m.id.user`` one when it names
        a 3PID; Forbidden when no store knows that 3PID."""
        try:
            body = json.loads(request.body)
        except (ValueError, RecursionError):
            # Not JSON, or nested deeper than the parser recurses: the
            # homeserver answers malformed logins its own way.
            body = None
        rewritten = self._rewrite(body) if isinstance(body, dict) else None
        data = request.body if rewritten is None else json.dumps(rewritten).encode()
        return self._homeserver.call(
            "POST",
            f"/_matrix/client/{request.version}/login",
            request.host,
            data=data,
            headers={**request.headers, "Content-Type": "application/json"},
        )

    def _rewrite(self, body: dict[str, Any]) -> dict[str, Any] | None:
        identifier = body.get("identifier")
        if not isinstance(identifier, dict):
            identifier = _legacy_identifier(body)
        kind = identifier.get("type")
        if kind == "m.id.thirdparty":
            medium, address = identifier.get("medium"), identifier.get("address")
            if not isinstance(medium, str) or not isinstance(address, str):
                return None
            mxid = self._resolve(medium, address)
            if mxid is None:
                logger.info("login refused reason=unknown-3pid medium=%s", medium)
                raise Forbidden(REFUSED)
            return _as_user_login(body, mxid)
        if kind == "m.id.user" and isinstance(identifier.get("user"), str):
            mxid = self._rewrite_user(identifier["user"])
            return _as_user_login(body, mxid) if mxid is not None else None
        return None

    def _rewrite_user(self, user: str) -> str | None:
        localpart, _, server = user.removeprefix("@").partition(":")
        if server and server.lower() != self._domain:
            return None
        for rule in self._rules:
            if rule.pattern.fullmatch(localpart):
                mxid = self._resolve(rule.medium, localpart)
                if mxid is not None:
                    return mxid
        return None

    def _resolve(self, medium: str, address: str) -> str | None:
        try:
            normalised = normalise_address(medium, address)
        except MatrixError:
            return None  # not a valid address of that medium: nobody's
        mxid = self._lookup(medium, normalised)
        if mxid is not None:
            logger.info("login 3PID resolved medium=%s mxid=%s", medium, mxid)
        return mxid


def _legacy_identifier(body: dict[str, Any]) -> dict[str, Any]:
    """The identifier older clients spell as top-level fields."""
    if "medium" in body or "address" in body:
        return {
            "type": "m.id.thirdparty",
            "medium": body.get("medium"),
            "address": body.get("address"),
        }
    if "user" in body:
        return {"type": "m.id.user", "user": body.get("user")}
    return {}


def _as_user_login(body: dict[str, Any], mxid: str) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in LEGACY_FIELDS}
    out["identifier"] = {"type": "m.id.user", "user": mxid}
    return out
