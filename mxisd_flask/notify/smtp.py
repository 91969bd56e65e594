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

from mxisd_flask.config.sections import EmailConfig
from mxisd_flask.errors import NotifyError

logger = logging.getLogger(__name__)

TIMEOUT_S = 20


class SmtpMailSender:
    def __init__(self, config: EmailConfig) -> None:
        self._config = config

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
        if not message.is_multipart():
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
    body = parsed.get_payload()
    fresh = EmailMessage(policy=email.policy.default)
    for name, value in parsed.items():
        if name.lower() not in (
            "content-type",
            "content-transfer-encoding",
            "mime-version",
        ):
            fresh[name] = value
    fresh.set_content(
        body if isinstance(body, str) else "",
        subtype=parsed.get_content_subtype() or "plain",
        charset="utf-8",
    )
    return fresh


def envelope_address(address: str) -> tuple[str, bool]:
    """The address for RCPT TO (IDNA domain), and whether it needs SMTPUTF8."""
    local, _, domain = address.rpartition("@")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        pass  # left as is: the server will refuse it and we report a send error
    return f"{local}@{domain}", not local.isascii()
