"""Renders mail templates and hands them to the mail sender."""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Mapping
from typing import Protocol

from mxisd_flask.config.sections import EmailConfig
from mxisd_flask.errors import EmailSendError, NotifyError
from mxisd_flask.model import redact
from mxisd_flask.notify.templates import render_message, with_url_encoded

logger = logging.getLogger(__name__)


class MailSender(Protocol):
    def send(self, recipient: str, rendered: str) -> None: ...


class NotificationService:
    def __init__(
        self, config: EmailConfig, sender: MailSender, domain: str, public_url: str
    ) -> None:
        self._config = config
        self._sender = sender
        self._domain = domain
        self._public_url = public_url

    def base_values(self, medium: str, address: str) -> dict[str, str]:
        values = {
            "DOMAIN": self._domain,
            "DOMAIN_PRETTY": self._domain[:1].upper() + self._domain[1:],
            "FROM_EMAIL": self._config.from_address,
            "FROM_NAME": self._config.from_name,
            "RECIPIENT_MEDIUM": medium,
            "RECIPIENT_ADDRESS": address,
            "REGISTER_URL": "",
        }
        values.update(self._config.placeholders)
        return values

    def send_validation(
        self, address: str, sid: str, client_secret: str, token: str, next_link: str
    ) -> None:
        query = urllib.parse.urlencode(
            {"sid": sid, "client_secret": client_secret, "token": token}
        )
        path = "/_matrix/identity/api/v1/validate/email/submitToken"
        link = f"{self._public_url}{path}?{query}"
        values = self.base_values("email", address)
        values.update(
            {"VALIDATION_LINK": link, "VALIDATION_TOKEN": token, "NEXT_URL": next_link}
        )
        self._send(address, self._config.validation_template, values, "validation")

    def send_invite(self, address: str, fields: Mapping[str, str]) -> None:
        values = self.base_values("email", address)
        values.update(fields)
        self._send(address, self._config.invite_template, values, "invite")

    def _send(
        self, address: str, template: str, values: dict[str, str], kind: str
    ) -> None:
        rendered = render_message(_read(template), with_url_encoded(values))
        try:
            self._sender.send(address, rendered)
        except NotifyError as exc:
            logger.error(
                "notification failed kind=%s to=%s: %s",
                kind,
                redact("email", address),
                exc,
            )
            raise EmailSendError("The email could not be sent") from exc
        logger.info("notification sent kind=%s to=%s", kind, redact("email", address))


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()
