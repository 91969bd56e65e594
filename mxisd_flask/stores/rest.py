"""mxisd's REST store: identities from a web service the admin runs.

Every capability is one POST of mxisd's JSON shapes (see
:mod:`mxisd_flask.stores.backend_json`) to an endpoint of ``rest.*``. The
backend is named by the admin in the configuration, never by a client, so it
may live on loopback or the LAN: these calls do not go through the outbound
guard of :mod:`mxisd_flask.outbound`, which exists for targets a client
chooses. They follow no redirects, read at most 1 MiB and give up after
``rest.timeout`` seconds.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests
import urllib3.exceptions

from mxisd_flask.config.sections import Config
from mxisd_flask.errors import ConfigError, StoreError
from mxisd_flask.stores import backend_json
from mxisd_flask.stores.base import (
    AuthResult,
    Capability,
    DirectoryEntry,
    IdentityStore,
    Profile,
    ThreePid,
    enabled_capabilities,
)

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
ENDPOINTS = {
    "auth": "rest.endpoints.auth",
    "directory": "rest.endpoints.directory",
    "single": "rest.endpoints.identity.single",
    "bulk": "rest.endpoints.identity.bulk",
    "listing": "rest.endpoints.identity.listing",
    "display_name": "rest.endpoints.profile.displayName",
    "threepids": "rest.endpoints.profile.threepids",
    "roles": "rest.endpoints.profile.roles",
}


@dataclass(frozen=True)
class RestConfig:
    """Whole endpoint URLs; an empty one turns its capability off."""

    auth: str
    directory: str
    single: str
    bulk: str
    listing: str
    display_name: str
    threepids: str
    roles: str
    timeout_s: float


def rest_config(values: Mapping[str, Any]) -> RestConfig:
    host = values["rest.host"]
    if host is not None:
        _check_url(host, "rest.host")
    urls = {name: _endpoint(values, key, host) for name, key in ENDPOINTS.items()}
    timeout = values["rest.timeout"]
    if timeout <= 0:
        raise ConfigError("rest.timeout: must be more than 0 seconds")
    return RestConfig(**urls, timeout_s=float(timeout))


def _endpoint(values: Mapping[str, Any], key: str, host: str | None) -> str:
    value = str(values[key]).strip()
    if not value:
        return ""
    if value.startswith("/"):
        if not host:
            raise ConfigError(f"rest.host: required, {key} is a path")
        return host.rstrip("/") + value
    _check_url(value, key)
    return value


def _check_url(value: str, key: str) -> None:
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: not a URL") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}: must be an http:// or https:// URL")


def from_config(config: Config) -> RestIdentityStore | None:
    if not config.values["rest.enabled"]:
        return None
    rest = rest_config(config.values)
    enabled = enabled_capabilities(config.values, "rest", RestIdentityStore.SUPPORTED)
    store = RestIdentityStore(rest, config.domain, enabled)
    if not store.capabilities:
        logger.warning("rest.enabled is true but every endpoint is empty or off")
        return None
    return store


def _offered(rest: RestConfig) -> set[Capability]:
    offered = set()
    if rest.single or rest.bulk:
        offered.add(Capability.LOOKUP)
    if rest.listing:
        offered.add(Capability.LISTING)
    if rest.auth:
        offered.add(Capability.AUTH)
    if rest.directory:
        offered.add(Capability.DIRECTORY)
    if rest.display_name or rest.threepids or rest.roles:
        offered.add(Capability.PROFILE)
    return offered


class RestIdentityStore(IdentityStore):
    name = "rest"
    SUPPORTED = frozenset(Capability)

    def __init__(
        self,
        config: RestConfig,
        domain: str,
        capabilities: frozenset[Capability] = SUPPORTED,
    ) -> None:
        self.config = config
        self.domain = domain
        self.capabilities = frozenset(capabilities & _offered(config))
        self._session = requests.Session()
        # requests reads REQUESTS_CA_BUNDLE itself; SSL_CERT_FILE is OpenSSL's.
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
        self._verify: bool | str = bundle or True

    def lookup(self, medium: str, address: str) -> str | None:
        if Capability.LOOKUP not in self.capabilities:
            return None  # also keeps lookup and bulk_lookup from calling round
        if not self.config.single:
            return self.bulk_lookup([(medium, address)]).get((medium, address))
        body = self._post(
            self.config.single,
            {"lookup": backend_json.single_request(medium, address)},
        )
        return None if body is None else backend_json.parse_single(body, self.domain)

    def bulk_lookup(self, threepids: Sequence[ThreePid]) -> dict[ThreePid, str]:
        if Capability.LOOKUP not in self.capabilities:
            return {}
        if not self.config.bulk:
            return super().bulk_lookup(threepids)
        found: dict[ThreePid, str] = {}
        for start in range(0, len(threepids), backend_json.BULK_CHUNK):
            chunk = threepids[start : start + backend_json.BULK_CHUNK]
            body = self._post(self.config.bulk, backend_json.bulk_request(chunk))
            if body is not None:
                found.update(backend_json.parse_bulk(body, self.domain, chunk))
        return found

    def iter_threepids(self) -> Iterator[tuple[str, str, str]]:
        """Every 3PID of the backend, page by page (each answer under 1 MiB)."""
        return backend_json.iter_listing(
            lambda cursor: self._post(
                self.config.listing, {"listing": {"from": cursor}}
            ),
            self.domain,
            "rest listing",
        )

    def authenticate(
        self, mxid: str, localpart: str, password: str
    ) -> AuthResult | None:
        request = {**backend_json.user_parts(mxid), "password": password}
        # A backend that refuses with 401 or 403 instead of success: false
        # is refusing the password, not failing.
        body = self._post(self.config.auth, {"auth": request}, (401, 403, 404))
        if body is None:
            return None
        return backend_json.parse_auth(body, mxid, self.domain)

    def directory_search(self, term: str, by_threepid: bool) -> list[DirectoryEntry]:
        request = backend_json.directory_request(term, by_threepid)
        body = self._post(self.config.directory, request)
        return [] if body is None else backend_json.parse_directory(body, self.domain)

    def profile(self, mxid: str) -> Profile | None:
        request = backend_json.user_parts(mxid)
        urls = (self.config.display_name, self.config.threepids, self.config.roles)
        return backend_json.ask_profile(
            [url or None for url in urls], lambda url: self._post(url, request)
        )

    def close(self) -> None:
        self._session.close()

    def _post(
        self, url: str, body: dict[str, Any], missing: tuple[int, ...] = (404,)
    ) -> Any:
        """POST ``body`` and parse the JSON answer; None for "not found".

        StoreError for anything else the backend does wrong: no connection,
        a timeout, a redirect, an error status or an answer that is not JSON.
        """
        where = _redact(url)
        logger.debug("rest backend call url=%s", where)
        try:
            with self._session.post(
                url,
                json=body,
                timeout=self.config.timeout_s,
                allow_redirects=False,
                stream=True,
                verify=self._verify,
            ) as response:
                raw = response.raw.read(MAX_BODY_BYTES + 1, decode_content=True)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise StoreError(f"POST {where}: {type(exc).__name__}") from exc
        status = response.status_code
        if status in missing or status == 204:
            return None
        if not 200 <= status < 300:
            raise StoreError(f"POST {where}: HTTP {status}")
        if len(raw) > MAX_BODY_BYTES:
            raise StoreError(f"POST {where}: answer larger than 1 MiB")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise StoreError(f"POST {where}: answer is not JSON") from exc


def _redact(url: str) -> str:
    """Scheme, host, port and path: no credentials, no query."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
