"""SMS through Twilio's Messages API, with the twilio library.

``baseUrl`` points the client at another endpoint (a Twilio-compatible
gateway, or a local server in tests). The library has no base URL setting,
so we give it our own HTTP client, the extension point Twilio documents for
custom transports, which sends each request to the same path under
``baseUrl``.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any, ClassVar

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from mxisd_flask.config.keys.msisdn import TWILIO, TWILIO_API
from mxisd_flask.config.sections import Config, Secret
from mxisd_flask.errors import ConfigError, NotifyError

logger = logging.getLogger(__name__)

TIMEOUT_S = 20.0


class BaseUrlHttpClient(TwilioHttpClient):  # type: ignore[misc]  # twilio is untyped
    """Twilio's own HTTP client, sending every request under ``base_url``."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        # A session per request: gunicorn threads share this client.
        super().__init__(pool_connections=False, timeout=timeout_s, logger=logger)
        self.base_url = base_url.rstrip("/")

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        parts = urllib.parse.urlsplit(url)
        query = f"?{parts.query}" if parts.query else ""
        target = f"{self.base_url}{parts.path}{query}"
        return super().request(method, target, *args, **kwargs)

    # The library logs every request at INFO; ours stay at debug, without
    # the URL (it holds the account SID).
    def log_request(self, kwargs: dict[str, Any]) -> None:
        logger.debug("twilio request method=%s", kwargs.get("method"))

    def log_response(self, status_code: int, response: Any) -> None:
        logger.debug("twilio response status=%s", status_code)


class TwilioSmsSender:
    medium: ClassVar[str] = "msisdn"
    name: ClassVar[str] = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: Secret,
        number: str,
        base_url: str = TWILIO_API,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self._number = number
        self._base_url = base_url
        self._client = Client(
            account_sid,
            str(auth_token),
            account_sid,
            http_client=BaseUrlHttpClient(base_url, timeout_s),
            # The configuration decides, not TWILIO_* variables of the process
            # (an empty mapping would make the library read os.environ).
            environment={"MXISD": "1"},
        )

    @classmethod
    def from_config(cls, config: Config) -> TwilioSmsSender | None:
        """The connector of ``threepid.medium.msisdn.connectors.twilio``, or
        None when none of its credentials are set."""
        v = config.values
        sid = v[TWILIO + "account_sid"] or v[TWILIO + "accountSid"]
        token = v[TWILIO + "auth_token"] or v[TWILIO + "authToken"]
        number = v[TWILIO + "number"]
        if not (sid or token or number):
            return None
        for key, value in (("account_sid", sid), ("auth_token", token)):
            if not value:
                raise ConfigError(f"{TWILIO}{key}: required with the twilio connector")
        if not number:
            raise ConfigError(f"{TWILIO}number: required with the twilio connector")
        base_url = v[TWILIO + "baseUrl"]
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{TWILIO}baseUrl: must be an http(s) URL")
        return cls(sid, Secret(token), number, base_url, config.outbound_timeout_s)

    def send(self, recipient: str, content: str) -> None:
        """Send ``content`` to ``recipient`` (E.164 digits, no '+')."""
        try:
            self._client.messages.create(
                to=f"+{recipient}", from_=self._number, body=content
            )
        except TwilioRestException as exc:
            # exc.msg may quote the number: the status and code are enough.
            raise NotifyError(
                f"Twilio {self._base_url} refused the message: "
                f"status={exc.status} code={exc.code}"
            ) from exc
        except (TwilioException, requests.RequestException) as exc:
            raise NotifyError(
                f"Twilio {self._base_url} unreachable: {type(exc).__name__}"
            ) from exc
