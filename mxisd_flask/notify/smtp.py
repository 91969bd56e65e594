"""Mail through an SMTP server with mxisd's TLS modes.

We talk to smtplib directly rather than through Flask-Mail: mxisd's tls mode
1 (STARTTLS when offered) and the verbatim mode (send the rendered template
as the message data) have no Flask-Mail equivalent.
"""

from __future__ import annotations

import email.policy
import email.utils
import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.parser import Parser
from typing import ClassVar

from mxisd_flask.config.sections import Config, EmailConfig
from mxisd_flask.errors import NotifyError

logger = logging.getLogger(__name__)

TIMEOUT_S = 20
MAX_LINE = 998  # RFC 5321 4.5.3.1.6, without the CRLF


class SmtpMailSender:
    medium: ClassVar[str] = "email"
    name: ClassVar[str] = "smtp"

    def __init__(self, config: EmailConfig) -> None:
        self._config = config

    @classmethod
    def from_config(cls, config: Config) -> SmtpMailSender:
        return cls(config.email)

    def send(self, recipient: str, rendered: str) -> None:
        """Hand one message to the SMTP server; raise NotifyError on failure."""
        data = self._message_bytes(recipient, rendered)
        smtp = self._config.smtp
        try:
            if smtp.tls == 3:
                client: smtplib.SMTP = smtplib.SMTP_SSL(
                    smtp.host,
                    smtp.port,
                    timeout=TIMEOUT_S,
                    context=ssl.create_default_context(),
                )
            else:
                client = smtplib.SMTP(smtp.host, smtp.port, timeout=TIMEOUT_S)
            with client:
                client.ehlo()
                if smtp.tls == 2 or (smtp.tls == 1 and client.has_extn("starttls")):
                    client.starttls(context=ssl.create_default_context())
                    client.ehlo()
                if smtp.login:
                    client.login(smtp.login, smtp.password)
                to, needs_utf8 = envelope_address(recipient)
                options = ["SMTPUTF8"] if needs_utf8 else []
                client.sendmail(self._config.from_address, [to], data, options)
        except (OSError, smtplib.SMTPException) as exc:
            raise NotifyError(f"SMTP {smtp.host}:{smtp.port}: {exc}") from exc

    def _message_bytes(self, recipient: str, rendered: str) -> bytes:
        if self._config.smtp.verbatim:
            return rendered.replace("\r\n", "\n").replace("\n", "\r\n").encode()
        message = Parser(_class=EmailMessage, policy=email.policy.default).parsestr(
            rendered
        )
        if message.is_multipart():
            _refresh_headers(message)
            _reencode_text_parts(message)
        else:
            message = _single_part(message)
        defaults = {
            "From": email.utils.formataddr(
                (self._config.from_name, self._config.from_address)
            ),
            "To": recipient,
            "Date": email.utils.formatdate(localtime=False),
            "Message-ID": email.utils.make_msgid(
                domain=self._config.from_address.rpartition("@")[2] or None
            ),
            "MIME-Version": "1.0",
        }
        for name, value in defaults.items():
            if name not in message:
                message[name] = value
        return message.as_bytes(policy=email.policy.SMTP)


def _single_part(parsed: EmailMessage) -> EmailMessage:
    """Re-encode a one-part template: any text, any line length, 7-bit safe.

    Headers with non-ASCII text are RFC 2047-encoded on output; the body gets
    a transfer encoding chosen for its content, and long lines are wrapped.
    """
    body = _text(parsed) if parsed.get_content_maintype() == "text" else ""
    fresh = EmailMessage(policy=email.policy.default)
    for name, value in parsed.items():
        if name.lower() not in (
            "content-type",
            "content-transfer-encoding",
            "mime-version",
        ):
            fresh[name] = value
    _set_text(fresh, str(body), parsed.get_content_subtype() or "plain", None)
    return fresh


def _refresh_headers(message: EmailMessage) -> None:
    """Set the template's own headers anew, as _single_part does, so text
    outside ASCII is RFC 2047-encoded on output."""
    kept = [
        (name, str(value))
        for name, value in message.items()
        if not name.lower().startswith("content-")
    ]
    for name in {name for name, _value in kept}:
        del message[name]
    for name, value in kept:
        message[name] = value


def _reencode_text_parts(message: EmailMessage) -> None:
    """Give every text part of a multipart template a fresh UTF-8 encoding.

    Templates are written in 8-bit text; re-encoding lets the email package
    choose a 7-bit-safe transfer encoding for what the placeholders put in.
    """
    for part in message.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        if not isinstance(part, EmailMessage):
            continue  # parsed with _class=EmailMessage: never taken
        _set_text(
            part,
            _text(part),
            part.get_content_subtype(),
            part.get_content_disposition(),
        )


def _set_text(
    part: EmailMessage, text: str, subtype: str, disposition: str | None
) -> None:
    """UTF-8 text in a 7-bit-safe encoding: quoted-printable once it leaves
    ASCII, since not every relay takes 8-bit mail, or has a line longer than
    SMTP allows (a long room name): quoted-printable wraps lines."""
    short = all(len(line) <= MAX_LINE for line in text.splitlines())
    part.set_content(
        text,
        subtype=subtype,
        charset="utf-8",
        cte="7bit" if text.isascii() and short else "quoted-printable",
        disposition=disposition,
    )


def _text(part: EmailMessage) -> str:
    """A text part's content. Parsed from text, an 8-bit part holds the
    template's characters as they are; decoding them again would mangle
    anything outside ASCII."""
    encoding = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    if encoding in ("7bit", "8bit", "binary"):
        return str(part.get_payload())
    return str(part.get_content())


def envelope_address(address: str) -> tuple[str, bool]:
    """The address for RCPT TO (IDNA domain), and whether it needs SMTPUTF8."""
    local, _, domain = address.rpartition("@")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        pass  # left as is: the server will refuse it and we report a send error
    return f"{local}@{domain}", not local.isascii()
