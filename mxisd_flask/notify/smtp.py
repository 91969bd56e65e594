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
                client.sendmail(self._config.from_address, [recipient], data)
        except (OSError, smtplib.SMTPException) as exc:
            raise NotifyError(f"SMTP {smtp.host}:{smtp.port}: {exc}") from exc

    def _message_bytes(self, recipient: str, rendered: str) -> bytes:
        if self._config.smtp.verbatim:
            return rendered.replace("\r\n", "\n").replace("\n", "\r\n").encode()
        message = Parser(_class=EmailMessage, policy=email.policy.SMTP).parsestr(
            rendered
        )
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
        if "Content-Type" not in message:
            message["Content-Type"] = 'text/plain; charset="utf-8"'
            message["Content-Transfer-Encoding"] = "8bit"
        return message.as_bytes(policy=email.policy.SMTP.clone(utf8=False))
