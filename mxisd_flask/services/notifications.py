"""Notifications: which handler tells a 3PID about an event, and how.

``notification.handler.<medium>`` names the handler of each medium. The
built-in one, ``raw`` (mxisd's name), renders the event's template and hands
the result to the medium's connector (``threepid.medium.<medium>.connector``).
A new transport (another SMS provider, say) is one connector class listed in
CONNECTORS; a new way of notifying (a provider's own templates) is one
handler class listed in HANDLERS.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Protocol

from mxisd_flask.config.sections import Config
from mxisd_flask.errors import ConfigError, EmailSendError, NotifyError, SendError
from mxisd_flask.model import redact
from mxisd_flask.notify.base import Connector
from mxisd_flask.notify.settings import MediumSettings, notify_settings
from mxisd_flask.notify.smtp import SmtpMailSender
from mxisd_flask.notify.templates import render_message, render_sms, with_url_encoded
from mxisd_flask.notify.twilio import TwilioSmsSender

logger = logging.getLogger(__name__)

INVITE = "invite"
VALIDATION = "session.validation"
FRAUDULENT_UNBIND = "session.unbind.fraudulent"
MATRIX_ID_INVITE = "generic.matrixId"

# (medium, connector name) -> the connector class's from_config.
CONNECTORS: dict[tuple[str, str], Callable[[Config], Connector | None]] = {
    (cls.medium, cls.name): cls.from_config for cls in (SmtpMailSender, TwilioSmsSender)
}

# How a medium's template text becomes the content its connector sends.
RENDERERS: dict[str, Callable[[str, Mapping[str, str]], str]] = {
    "email": render_message,
    "msisdn": render_sms,
}


class MailSender(Protocol):
    """What create_app accepts in place of the configured email connector."""

    def send(self, recipient: str, content: str) -> None: ...


class NotificationHandler(Protocol):
    """Tells one 3PID of one medium about an event; raises NotifyError."""

    def notify(self, event: str, address: str, values: Mapping[str, str]) -> None: ...


class TemplateHandler:
    """The built-in handler: the event's template, through the connector."""

    def __init__(self, settings: MediumSettings, connector: MailSender) -> None:
        self._settings = settings
        self._connector = connector
        self._render = RENDERERS[settings.medium]

    def notify(self, event: str, address: str, values: Mapping[str, str]) -> None:
        with open(self._settings.templates[event], encoding="utf-8") as handle:
            template = handle.read()
        self._connector.send(address, self._render(template, with_url_encoded(values)))


HandlerFactory = Callable[[MediumSettings, MailSender], NotificationHandler]
HANDLERS: dict[str, HandlerFactory] = {"raw": TemplateHandler}


def build_handlers(
    config: Config, mail_sender: MailSender | None = None
) -> dict[str, NotificationHandler]:
    """One handler per medium that has a connector configured."""
    handlers: dict[str, NotificationHandler] = {}
    for medium, settings in notify_settings(config).media.items():
        connector: MailSender | None = _connector(config, settings)
        if medium == "email" and mail_sender is not None:
            connector = mail_sender
        if connector is None:
            logger.warning(
                "no connector configured medium=%s: its validation and invite"
                " messages cannot be sent (requestToken answers M_SEND_ERROR)",
                medium,
            )
            continue
        factory = HANDLERS.get(settings.handler)
        if factory is None:
            raise ConfigError(
                f"notification.handler.{medium}: unknown handler {settings.handler}"
                f" (known: {', '.join(sorted(HANDLERS))})"
            )
        handlers[medium] = factory(settings, connector)
    return handlers


def _connector(config: Config, settings: MediumSettings) -> Connector | None:
    factory = CONNECTORS.get((settings.medium, settings.connector))
    if factory is not None:
        return factory(config)
    known = ", ".join(name for medium, name in CONNECTORS if medium == settings.medium)
    raise ConfigError(
        f"threepid.medium.{settings.medium}.connector: unknown connector "
        f"{settings.connector} (known: {known})"
    )


class NotificationService:
    def __init__(
        self, config: Config, handlers: Mapping[str, NotificationHandler]
    ) -> None:
        self._config = config
        self._handlers = handlers
        media = notify_settings(config).media
        self._placeholders = {medium: s.placeholders for medium, s in media.items()}

    def base_values(self, medium: str, address: str) -> dict[str, str]:
        domain = self._config.domain
        values = {
            "DOMAIN": domain,
            "DOMAIN_PRETTY": domain[:1].upper() + domain[1:].lower(),
            "FROM_EMAIL": self._config.email.from_address,
            "FROM_NAME": self._config.email.from_name,
            "RECIPIENT_MEDIUM": medium,
            "RECIPIENT_ADDRESS": address,
            "REGISTER_URL": "",
        }
        values.update(self._placeholders.get(medium, {}))
        return values

    def send_validation(
        self,
        medium: str,
        address: str,
        sid: str,
        client_secret: str,
        token: str,
        next_link: str,
    ) -> None:
        query = urllib.parse.urlencode(
            {"sid": sid, "client_secret": client_secret, "token": token}
        )
        path = f"/_matrix/identity/api/v1/validate/{medium}/submitToken"
        values = {
            "VALIDATION_LINK": f"{self._config.server.public_url}{path}?{query}",
            "VALIDATION_TOKEN": token,
            "NEXT_URL": next_link,
        }
        self.notify(VALIDATION, medium, address, values)

    def send_fraudulent_unbind_warning(
        self, medium: str, address: str, mxid: str
    ) -> None:
        """Warn a 3PID's owner that someone asked, without proof, to unbind it
        from ``mxid``."""
        self.notify(FRAUDULENT_UNBIND, medium, address, {"SENDER_ID": mxid})

    def send_matrix_id_invite(
        self,
        medium: str,
        address: str,
        room_id: str,
        sender: str,
        room_name: str = "",
        sender_name: str = "",
    ) -> None:
        """Tell a user who has a Matrix ID, through one of their 3PIDs, that
        ``sender`` invited them to a room (sent by the homeserver work, #4)."""
        fields = {
            "ROOM_ID": room_id,
            "ROOM_NAME": room_name,
            "ROOM_NAME_OR_ID": room_name or room_id,
            "SENDER_ID": sender,
            "SENDER_NAME": sender_name,
            "SENDER_NAME_OR_ID": sender_name or sender,
        }
        self.notify(MATRIX_ID_INVITE, medium, address, fields)

    def notify(
        self, event: str, medium: str, address: str, fields: Mapping[str, str]
    ) -> None:
        """Send ``event`` to (medium, address); a client-readable error if not."""
        failed = EmailSendError if medium == "email" else SendError
        handler = self._handlers.get(medium)
        if handler is None:
            raise failed(f"This server cannot send {medium} notifications")
        values = self.base_values(medium, address)
        values.update(fields)
        to = redact(medium, address)
        try:
            handler.notify(event, address, values)
        except NotifyError as exc:
            logger.error("notification failed kind=%s to=%s: %s", event, to, exc)
            noun = "email" if medium == "email" else "message"
            raise failed(f"The {noun} could not be sent") from exc
        logger.info("notification sent kind=%s to=%s", event, to)
