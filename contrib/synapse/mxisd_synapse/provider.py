"""The password auth provider, on Synapse's module API only.

Synapse calls :meth:`MxisdPasswordProvider.check_password` for every
``m.login.password`` login (and user-interactive re-authentication). We post
the user ID and password to the identity server's
``/_matrix-internal/identity/v1/check_credentials``; when it accepts them we
create the account on first login, with the display name and email
addresses of the profile it answered, and return the canonical user ID.
When it refuses, or cannot be reached, we return None and Synapse tries its
other password checkers (its own database, when ``password_config.localdb_enabled``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from synapse.module_api import (
    JsonDict,
    LoginResponse,
    ModuleApi,
    UserID,
    make_deferred_yieldable,
)
from synapse.module_api.errors import ConfigError, SynapseError
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

logger = logging.getLogger(__name__)

CHECK_PATH = "/_matrix-internal/identity/v1/check_credentials"
MAX_ANSWER_BYTES = 1 << 20

AuthAnswer = tuple[str, Callable[[LoginResponse], Awaitable[None]] | None]


@dataclass(frozen=True)
class ProviderConfig:
    endpoint: str
    create_users: bool = True
    update_display_name: bool = False
    threepids: bool = True


@dataclass(frozen=True)
class Profile:
    display_name: str | None
    emails: tuple[str, ...]


class MxisdPasswordProvider:
    def __init__(self, config: ProviderConfig, api: ModuleApi) -> None:
        self._config = config
        self._api = api
        api.register_password_auth_provider_callbacks(
            auth_checkers={("m.login.password", ("password",)): self.check_password}
        )

    @staticmethod
    def parse_config(config: dict[str, Any]) -> ProviderConfig:
        endpoint = config.get("endpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith(
            ("http://", "https://")
        ):
            raise ConfigError("endpoint: the identity server's http(s) base URL")
        flags = {}
        for name in ("create_users", "update_display_name", "threepids"):
            value = config.get(name, getattr(ProviderConfig, name))
            if not isinstance(value, bool):
                raise ConfigError(f"{name}: must be true or false")
            flags[name] = value
        return ProviderConfig(endpoint=endpoint.rstrip("/"), **flags)

    async def check_password(
        self, username: str, login_type: str, login_dict: JsonDict
    ) -> AuthAnswer | None:
        password = login_dict.get("password")
        if login_type != "m.login.password" or not isinstance(password, str):
            return None
        asked = self._api.get_qualified_user_id(username)

        auth = await self._ask(asked, password)
        if auth is None:
            return None
        mxid = self._mxid_of(auth, asked)
        if mxid is None:
            return None

        canonical = await self._ensure_user(mxid, _profile_of(auth))
        if canonical is None:
            return None
        logger.info("password accepted by the identity server user=%s", canonical)
        return canonical, None

    async def _ask(self, user_id: str, password: str) -> JsonDict | None:
        """The identity server's ``auth`` object when it accepted the password."""
        body = json.dumps({"user": {"id": user_id, "password": password}})
        # Not http_client.post_json_get_json: it logs the request body (the
        # password) at debug level.
        try:
            response = await self._api.http_client.request(
                "POST",
                self._config.endpoint + CHECK_PATH,
                data=body.encode("utf-8"),
                headers=Headers({b"Content-Type": [b"application/json"]}),
            )
            raw = await make_deferred_yieldable(readBody(response))
        except Exception as exc:  # noqa: BLE001  # any transport failure
            # Twisted reports connection, TLS and timeout failures with many
            # unrelated types; each means the same here: no answer.
            logger.warning(
                "identity server unreachable user=%s: %s", user_id, type(exc).__name__
            )
            return None
        return _accepted(response.code, raw, user_id)

    def _mxid_of(self, auth: JsonDict, asked: str) -> str | None:
        """The user ID the identity server answered, canonical and ours."""
        ident = auth.get("id")
        value = ident.get("value") if isinstance(ident, dict) else None
        kind = ident.get("type") if isinstance(ident, dict) else None
        if not isinstance(value, str):
            mxid = asked  # mxisd's oldest answers named no id
        elif kind == "localpart":
            mxid = f"@{value}:{self._api.server_name}"
        elif kind == "mxid":
            mxid = value
        else:
            logger.warning("identity server answered an unknown id type user=%s", asked)
            return None
        mxid = mxid.lower()
        try:
            is_ours = self._api.is_mine(mxid)
        except SynapseError:
            is_ours = False
        if not is_ours:
            logger.warning("identity server answered a foreign user id user=%s", asked)
            return None
        return mxid

    async def _ensure_user(self, mxid: str, profile: Profile) -> str | None:
        existing = await self._api.check_user_exists(mxid)
        if existing is not None:
            if self._config.update_display_name and profile.display_name:
                await self._api.set_displayname(
                    UserID.from_string(existing), profile.display_name
                )
            return existing
        if not self._config.create_users:
            logger.info("no account and create_users is off user=%s", mxid)
            return None
        return await self._register(mxid, profile)

    async def _register(self, mxid: str, profile: Profile) -> str | None:
        localpart = UserID.from_string(mxid).localpart
        emails = list(profile.emails) if self._config.threepids else []
        try:
            created = await self._api.register_user(
                localpart, displayname=profile.display_name, emails=emails
            )
        except SynapseError as exc:
            # Synapse creates the account before it adds the emails; an
            # email it refuses leaves the account, without that email.
            created = await self._api.check_user_exists(mxid)
            if created is None:
                logger.warning("could not create user=%s: %s", mxid, exc.msg)
                return None
            logger.warning("created user=%s without its emails: %s", mxid, exc.msg)
            return created
        logger.info("created user=%s from the identity server's profile", created)
        return created


def _accepted(status: int, raw: bytes, user_id: str) -> JsonDict | None:
    if status != 200:
        logger.warning("identity server answered HTTP %d user=%s", status, user_id)
        return None
    if len(raw) > MAX_ANSWER_BYTES:
        logger.warning("identity server answer too large user=%s", user_id)
        return None
    try:
        answer = json.loads(raw)
    except ValueError:
        logger.warning("identity server answer is not JSON user=%s", user_id)
        return None
    auth = answer.get("auth") if isinstance(answer, dict) else None
    if not isinstance(auth, dict):
        logger.warning("identity server answer has no auth object user=%s", user_id)
        return None
    if auth.get("success") is not True:
        logger.info("password refused by the identity server user=%s", user_id)
        return None
    return auth


def _profile_of(auth: JsonDict) -> Profile:
    profile = auth.get("profile")
    if not isinstance(profile, dict):
        return Profile(None, ())
    name = profile.get("display_name")
    emails = []
    for threepid in profile.get("three_pids") or []:
        if not isinstance(threepid, dict) or threepid.get("medium") != "email":
            continue  # the module API can add email addresses only
        address = threepid.get("address")
        if isinstance(address, str) and "@" in address:
            emails.append(address.lower())
    return Profile(name if isinstance(name, str) and name else None, tuple(emails))
