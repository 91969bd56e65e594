"""Fixtures: a local HTTP server speaking Twilio's Messages API.

It answers the one call we make, ``POST /2010-04-01/Accounts/{sid}/
Messages.json`` with HTTP basic auth and a form body (To, From, Body), the
way Twilio does: 201 with the message resource, or Twilio's error JSON
(code, message, more_info, status). Tests reach it through the connector's
``baseUrl``, with the real twilio client.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from conftest import JsonHandler, serve_http

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-test-auth-token"
FROM_NUMBER = "+15005550006"
MESSAGES_RE = re.compile(r"^/2010-04-01/Accounts/([A-Za-z0-9]+)/Messages\.json$")


@dataclass(frozen=True)
class Sms:
    to: str
    from_: str
    body: str


class TwilioServer:
    """Records every accepted message; ``fail(...)`` makes it refuse them."""

    def __init__(self) -> None:
        self.messages: list[Sms] = []
        self.refused: list[Sms] = []  # well-formed, refused by fail()
        self.requests = 0
        self.failure: tuple[int, int, str] | None = None
        outer = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:  # noqa: N802  # http.server hook name
                outer.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                status, body = outer.answer(self.path, self.headers, form)
                self.send_json(status, body)

        self.server, self.url = serve_http(Handler)

    def fail(self, status: int = 400, code: int = 21211, message: str = "") -> None:
        """Refuse every message from now on with Twilio's error JSON."""
        self.failure = (status, code, message or "The 'To' number is not valid.")

    def recover(self) -> None:
        self.failure = None

    def answer(
        self, path: str, headers: Any, form: dict[str, list[str]]
    ) -> tuple[int, dict[str, Any]]:
        match = MESSAGES_RE.match(path)
        if not match:
            return _error(404, 20404, f"The requested resource {path} was not found")
        expected = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        if match.group(1) != ACCOUNT_SID or headers.get("Authorization") != (
            f"Basic {expected}"
        ):
            return _error(401, 20003, "Authenticate")
        fields = {name: values[0] for name, values in form.items()}
        missing = [f for f in ("To", "From", "Body") if not fields.get(f)]
        if missing:
            return _error(400, 21604, f"A '{missing[0]}' parameter is required.")
        sms = Sms(fields["To"], fields["From"], fields["Body"])
        if self.failure:
            self.refused.append(sms)
            return _error(*self.failure)
        self.messages.append(sms)
        return 201, _message_resource(sms)

    def last(self) -> Sms:
        assert self.messages, "no SMS was received"
        return self.messages[-1]

    def code(self, sms: Sms | None = None) -> str:
        """The numeric validation code in ``sms`` (default: the last one)."""
        body = (sms or self.last()).body
        match = re.search(r"\b(\d{6})\b", body)
        assert match, f"no code in SMS: {body!r}"
        return match.group(1)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _error(status: int, code: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def _message_resource(sms: Sms) -> dict[str, Any]:
    sid = "SM" + uuid.uuid4().hex
    return {
        "account_sid": ACCOUNT_SID,
        "api_version": "2010-04-01",
        "body": sms.body,
        "date_created": "Thu, 03 Dec 2026 10:00:00 +0000",
        "date_sent": None,
        "date_updated": "Thu, 03 Dec 2026 10:00:00 +0000",
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": sms.from_,
        "messaging_service_sid": None,
        "num_media": "0",
        "num_segments": "1",
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        "status": "queued",
        "subresource_uris": {},
        "to": sms.to,
        "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json",
    }


@pytest.fixture
def twilio() -> Iterator[TwilioServer]:
    server = TwilioServer()
    yield server
    server.close()


def twilio_config(server: TwilioServer, **extra: str) -> dict[str, Any]:
    """Config keys that point the twilio connector at ``server``."""
    connector = {
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "number": FROM_NUMBER,
        "baseUrl": server.url,
        **extra,
    }
    return {"threepid": {"medium": {"msisdn": {"connectors": {"twilio": connector}}}}}
