"""Templates, handlers and connectors, checked on what the real SMTP server
and the local Twilio server receive."""

from __future__ import annotations

import html
import re
import urllib.parse
from email.message import EmailMessage
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fixtures_twilio import TwilioServer, twilio_config
from flask.testing import FlaskClient

from conftest import V1, ConfigFactory, FakeClock, Mailbox, request_token, text_of
from mxisd_flask.app import create_app
from mxisd_flask.config import Config, ConfigError
from mxisd_flask.services import notifications
from mxisd_flask.services.notifications import FRAUDULENT_UNBIND, MATRIX_ID_INVITE

SMS_REQUEST = {
    "client_secret": "s",
    "send_attempt": 1,
    "country": "FR",
    "phone_number": "0612345678",
}
HOSTILE_INVITE = {
    "medium": "email",
    "address": "erin@example.org",
    "room_id": "!room:example.org",
    "sender": "@mallory:example.org",
    "room_name": '<script>alert("x")</script> & Co',
    "sender_display_name": "Mallory\r\nBcc: victim@evil.example\r\n\r\nInjected",
}


def leaves(message: EmailMessage) -> list[EmailMessage]:
    return [
        part
        for part in message.walk()
        if isinstance(part, EmailMessage) and not part.is_multipart()
    ]


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def app_with(make_config: ConfigFactory, clock: FakeClock, **extra: Any) -> FlaskClient:
    return create_app(make_config(**extra), clock=clock).test_client()


def email_templates(**paths: Any) -> dict[str, Any]:
    return {"threepid": {"medium": {"email": {"generators": {"template": paths}}}}}


def test_validation_mail_is_multipart_text_and_html(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    request_token(client, "carol@example.org")

    _sender, recipients, message = mailbox.messages[-1]
    assert recipients == ["carol@example.org"]
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in leaves(message)] == [
        "text/plain",
        "text/html",
    ]
    assert all(p.get_content_charset() == "utf-8" for p in leaves(message))
    for header in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version"):
        assert message[header], header
    link = re.search(r"https://\S+submitToken\?\S+", text_of(message))
    assert link and "token=" in link.group(0)
    # In HTML the link's & are escaped; a browser reads the same URL back.
    assert f'href="{html.escape(link.group(0))}"' in html_of(message)


def test_hostile_invite_values_are_escaped_in_html_only_and_inject_nothing(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    response = client.post(f"{V1}/store-invite", json=HOSTILE_INVITE)

    assert response.status_code == 200, response.get_json()
    _sender, recipients, message = mailbox.messages[-1]
    raw = mailbox.raw[-1]
    assert recipients == ["erin@example.org"]
    assert message["Bcc"] is None and b"\nBcc:" not in raw
    assert message["Subject"] == (
        "Mallory Bcc: victim@evil.example Injected invited you to "
        '<script>alert("x")</script> & Co on Matrix'
    )
    assert len(leaves(message)) == 2
    text, page = text_of(message), html_of(message)
    assert '<script>alert("x")</script> & Co' in text
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co" in page
    assert "Mallory Bcc: victim@evil.example Injected" in page


def test_non_ascii_values_leave_as_seven_bit_mail(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    invite = {**HOSTILE_INVITE, "room_name": "Café ☕", "sender_display_name": "Zoë"}

    client.post(f"{V1}/store-invite", json=invite)

    raw = mailbox.raw[-1]
    assert raw.isascii()  # headers RFC 2047-encoded, bodies transfer-encoded
    message = mailbox.last()
    assert message["Subject"] == "Zoë invited you to Café ☕ on Matrix"
    assert "Café ☕" in text_of(message) and "Café ☕" in html_of(message)
    assert all(
        p["Content-Transfer-Encoding"] in ("7bit", "quoted-printable", "base64")
        for p in leaves(message)
    )


MXISD_STYLE = """Subject: Invitation to %ROOM_NAME_OR_ID%
MIME-Version: 1.0
Content-Type: multipart/alternative;
  boundary=OuterBoundary42

--OuterBoundary42
Content-Type: text/plain; charset=UTF-8
Content-Disposition: inline

%SENDER_NAME_OR_ID% invites you to %ROOM_NAME%; register at %REGISTER_URL%
(%INVITE_ADDRESS_URL_ENCODED%)
--OuterBoundary42
Content-Type: multipart/related;
  boundary="InnerBoundary42";
  type="text/html"

--InnerBoundary42
Content-Type: text/html; charset=UTF-8
Content-Disposition: inline

<p>%SENDER_NAME_OR_ID% invites you to <b>%ROOM_NAME%</b></p>
<a href="%REGISTER_URL%?to=%INVITE_ADDRESS_URL_ENCODED%">Register</a>
--InnerBoundary42--

--OuterBoundary42--
"""


def test_an_mxisd_multipart_template_renders_part_by_part(
    make_config: ConfigFactory, clock: FakeClock, mailbox: Mailbox, tmp_path: Path
) -> None:
    template = tmp_path / "invite.eml"
    template.write_text(MXISD_STYLE)
    placeholder = {"REGISTER_URL": "https://app.example.org/#/register?a=1&b=2"}
    client = app_with(
        make_config,
        clock,
        **email_templates(invite=str(template), placeholder=placeholder),
    )

    client.post(f"{V1}/store-invite", json=HOSTILE_INVITE)

    message = mailbox.last()
    assert message["Subject"] == 'Invitation to <script>alert("x")</script> & Co'
    assert [p.get_content_type() for p in leaves(message)] == [
        "text/plain",
        "text/html",
    ]
    text, page = text_of(message), html_of(message)
    assert "register at https://app.example.org/#/register?a=1&b=2" in text
    assert "(erin%40example.org)" in text
    assert "<b>&lt;script&gt;" in page
    assert 'href="https://app.example.org/#/register?a=1&amp;b=2&amp;' not in page
    assert 'href="https://app.example.org/#/register?a=1&amp;b=2?to=erin%40' in page
    assert leaves(message)[1].get_content_disposition() == "inline"


def test_a_single_part_html_template_is_escaped(
    make_config: ConfigFactory, clock: FakeClock, mailbox: Mailbox, tmp_path: Path
) -> None:
    template = tmp_path / "invite.eml"
    template.write_text(
        "Subject: %ROOM_NAME%\nContent-Type: text/html; charset=utf-8\n\n"
        "<h1>%ROOM_NAME%</h1>\n"
    )
    client = app_with(make_config, clock, **email_templates(invite=str(template)))

    client.post(f"{V1}/store-invite", json=HOSTILE_INVITE)

    message = mailbox.last()
    assert message.get_content_type() == "text/html"
    assert str(message.get_content()).strip() == (
        "<h1>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co</h1>"
    )


def test_verbatim_sends_the_rendered_template_as_written(
    make_config: ConfigFactory,
    clock: FakeClock,
    mailbox: Mailbox,
    tmp_path: Path,
    smtp_server: tuple[int, Mailbox],
) -> None:
    template = tmp_path / "invite.eml"
    template.write_text(MXISD_STYLE)
    smtp = {"verbatim": True}
    client = app_with(
        make_config,
        clock,
        threepid={
            "medium": {
                "email": {
                    "connectors": {"smtp": smtp},
                    "generators": {"template": {"invite": str(template)}},
                }
            }
        },
    )

    client.post(f"{V1}/store-invite", json={**HOSTILE_INVITE, "room_name": "<i>"})

    sent = mailbox.raw[-1].decode().replace("\r\n", "\n")
    expected = (
        MXISD_STYLE.replace("%ROOM_NAME_OR_ID%", "<i>")
        .replace("<b>%ROOM_NAME%</b>", "<b>&lt;i&gt;</b>")
        .replace("%ROOM_NAME%", "<i>")
        .replace("%REGISTER_URL%", "")
        .replace("%INVITE_ADDRESS_URL_ENCODED%", "erin%40example.org")
        .replace("%SENDER_NAME_OR_ID%", "Mallory Bcc: victim@evil.example Injected")
    )
    assert sent == expected


EVERY_PLACEHOLDER = {
    "invite": [
        "DOMAIN", "DOMAIN_PRETTY", "FROM_EMAIL", "FROM_NAME", "RECIPIENT_MEDIUM",
        "RECIPIENT_ADDRESS", "SENDER_ID", "SENDER_NAME", "SENDER_NAME_OR_ID",
        "INVITE_MEDIUM", "INVITE_ADDRESS", "ROOM_ID", "ROOM_NAME",
        "ROOM_NAME_OR_ID", "REGISTER_URL",
    ],
    "validation": [
        "DOMAIN", "DOMAIN_PRETTY", "FROM_EMAIL", "FROM_NAME", "RECIPIENT_MEDIUM",
        "RECIPIENT_ADDRESS", "VALIDATION_LINK", "VALIDATION_TOKEN", "NEXT_URL",
        "REGISTER_URL",
    ],
}  # fmt: skip


def placeholder_template(tmp_path: Path, names: list[str]) -> str:
    lines = [f"{n}=[%{n}%] {n}_URL_ENCODED=[%{n}_URL_ENCODED%]" for n in names]
    path = tmp_path / "every.eml"
    path.write_text("Subject: every placeholder\n\n" + "\n".join(lines) + "\n")
    return str(path)


def rendered_values(message: EmailMessage) -> dict[str, str]:
    found = re.findall(r"^(\w+)=\[(.*?)\]", text_of(message), re.M)
    found += re.findall(r" (\w+_URL_ENCODED)=\[(.*?)\]", text_of(message))
    return dict(found)


def assert_every_url_encoded_form(values: dict[str, str], names: list[str]) -> None:
    """Each <NAME>_URL_ENCODED marker was replaced by its value, percent-encoded
    (an unknown marker would have stayed as written)."""
    for name in names:
        encoded = urllib.parse.quote(values[name], safe="")
        assert values[f"{name}_URL_ENCODED"] == encoded, name


def test_every_invite_placeholder_and_its_url_encoded_form(
    make_config: ConfigFactory, clock: FakeClock, mailbox: Mailbox, tmp_path: Path
) -> None:
    path = placeholder_template(tmp_path, EVERY_PLACEHOLDER["invite"])
    client = app_with(
        make_config,
        clock,
        **email_templates(invite=path, placeholder={"REGISTER_URL": "https://r/"}),
    )
    invite = {**HOSTILE_INVITE, "room_name": "Book club", "sender_display_name": "M"}

    client.post(f"{V1}/store-invite", json=invite)

    values = rendered_values(mailbox.last())
    assert values["DOMAIN"] == "example.org"
    assert values["DOMAIN_PRETTY"] == "Example.org"
    assert values["FROM_EMAIL"] == "id@example.org"
    assert values["FROM_NAME"] == "Example ID"
    assert values["RECIPIENT_MEDIUM"] == values["INVITE_MEDIUM"] == "email"
    assert (
        values["RECIPIENT_ADDRESS"] == values["INVITE_ADDRESS"] == ("erin@example.org")
    )
    assert values["RECIPIENT_ADDRESS_URL_ENCODED"] == "erin%40example.org"
    assert values["SENDER_ID"] == "@mallory:example.org"
    assert values["SENDER_NAME"] == values["SENDER_NAME_OR_ID"] == "M"
    assert values["ROOM_ID"] == "!room:example.org"
    assert values["ROOM_NAME"] == values["ROOM_NAME_OR_ID"] == "Book club"
    assert values["ROOM_NAME_URL_ENCODED"] == "Book%20club"
    assert values["REGISTER_URL"] == "https://r/"
    assert values["REGISTER_URL_URL_ENCODED"] == "https%3A%2F%2Fr%2F"
    assert "%" not in "".join(v for k, v in values.items() if "URL_ENCODED" not in k)
    assert_every_url_encoded_form(values, EVERY_PLACEHOLDER["invite"])


def test_or_id_placeholders_fall_back_to_the_ids(
    make_config: ConfigFactory, clock: FakeClock, mailbox: Mailbox, tmp_path: Path
) -> None:
    path = placeholder_template(tmp_path, EVERY_PLACEHOLDER["invite"])
    client = app_with(make_config, clock, **email_templates(invite=path))
    bare = {k: HOSTILE_INVITE[k] for k in ("medium", "address", "room_id", "sender")}

    client.post(f"{V1}/store-invite", json=bare)

    values = rendered_values(mailbox.last())
    assert values["SENDER_NAME"] == values["ROOM_NAME"] == ""
    assert values["SENDER_NAME_OR_ID"] == "@mallory:example.org"
    assert values["ROOM_NAME_OR_ID"] == "!room:example.org"


def test_every_validation_placeholder(
    make_config: ConfigFactory, clock: FakeClock, mailbox: Mailbox, tmp_path: Path
) -> None:
    path = placeholder_template(tmp_path, EVERY_PLACEHOLDER["validation"])
    client = app_with(
        make_config, clock, **email_templates(session={"validation": path})
    )

    client.post(
        f"{V1}/validate/email/requestToken",
        json={
            "client_secret": "s3",
            "email": "carol@example.org",
            "send_attempt": 1,
            "next_link": "https://app.example.org/next",
        },
    )

    values = rendered_values(mailbox.last())
    token = values["VALIDATION_TOKEN"]
    assert len(token) >= 32
    assert values["VALIDATION_LINK"].startswith(
        "https://id.example.org/_matrix/identity/api/v1/validate/email/submitToken?"
    )
    assert f"token={token}" in values["VALIDATION_LINK"]
    assert values["NEXT_URL"] == "https://app.example.org/next"
    assert values["NEXT_URL_URL_ENCODED"] == "https%3A%2F%2Fapp.example.org%2Fnext"
    assert values["RECIPIENT_ADDRESS"] == "carol@example.org"
    assert_every_url_encoded_form(values, EVERY_PLACEHOLDER["validation"])


def send_event(app: Any, event: str, medium: str, address: str, room: str) -> None:
    service = app.extensions["mxisd"].notifications
    if event == FRAUDULENT_UNBIND:
        service.send_fraudulent_unbind_warning(medium, address, "@mallory:example.org")
    else:
        service.send_matrix_id_invite(
            medium, address, "!r:example.org", "@m:example.org", room
        )


@pytest.mark.parametrize("event", [FRAUDULENT_UNBIND, MATRIX_ID_INVITE])
def test_built_in_mail_templates_of_the_other_events(
    app: Any, mailbox: Mailbox, event: str
) -> None:
    send_event(app, event, "email", "carol@example.org", "<Room>")

    message = mailbox.last()
    assert mailbox.messages[-1][1] == ["carol@example.org"]
    assert [p.get_content_type() for p in leaves(message)] == [
        "text/plain",
        "text/html",
    ]
    assert "%" not in text_of(message) and "%" not in str(message["Subject"])
    if event == FRAUDULENT_UNBIND:
        assert "@mallory:example.org" in text_of(message)
        assert "carol@example.org" in html_of(message)
    else:
        assert "<Room>" in text_of(message)
        assert "&lt;Room&gt;" in html_of(message)


@pytest.mark.parametrize("event", [FRAUDULENT_UNBIND, MATRIX_ID_INVITE])
def test_built_in_sms_templates_of_the_other_events(
    make_config: ConfigFactory, clock: FakeClock, twilio: TwilioServer, event: str
) -> None:
    app = create_app(make_config(**twilio_config(twilio)), clock=clock)

    send_event(app, event, "msisdn", "33612345678", "Book club")

    body = twilio.last().body
    assert twilio.last().to == "+33612345678"
    assert "%" not in body and "\n" not in body
    assert ("@mallory:example.org" if event == FRAUDULENT_UNBIND else "Book club") in (
        body
    )


def test_sms_template_and_placeholders_come_from_the_msisdn_keys(
    make_config: ConfigFactory, clock: FakeClock, twilio: TwilioServer, tmp_path: Path
) -> None:
    template = tmp_path / "sms.txt"
    template.write_text("%BRAND% code %VALIDATION_TOKEN% for %RECIPIENT_ADDRESS%\n")
    raw = twilio_config(twilio)
    raw["threepid"]["medium"]["msisdn"]["generators"] = {
        "template": {
            "session": {"validation": str(template)},
            "placeholder": {"BRAND": "Acme\nChat"},
        }
    }
    client = create_app(make_config(**raw), clock=clock).test_client()

    client.post(
        f"{V1}/validate/msisdn/requestToken",
        json=SMS_REQUEST,
    )

    assert twilio.last().body == f"Acme Chat code {twilio.code()} for 33612345678"


def test_expired_page_is_an_admin_template(
    make_config: ConfigFactory, clock: FakeClock, mailbox: Mailbox, tmp_path: Path
) -> None:
    page = tmp_path / "expired.html"
    page.write_text("<p>TOO LATE: %ERROR%</p>")
    client = app_with(
        make_config,
        clock,
        view={"session": {"onTokenSubmit": {"expired": str(page)}}},
    )
    sid = request_token(client, "carol@example.org").get_json()["sid"]
    clock.advance(24 * 3600 + 1)

    response = client.get(
        f"{V1}/validate/email/submitToken",
        query_string={"sid": sid, "client_secret": "secret-1", "token": "x"},
    )

    assert response.status_code == 400
    assert response.get_data(as_text=True) == (
        "<p>TOO LATE: This validation session has expired</p>"
    )


@pytest.mark.parametrize(
    "extra, key",
    [
        ({"notification": {"handler": {"email": "sendgrid"}}}, "notification.handler"),
        (
            {"threepid": {"medium": {"msisdn": {"connector": "nexmo"}}}},
            "threepid.medium.msisdn.connector",
        ),
        (
            {"threepid": {"medium": {"email": {"generator": "freemarker"}}}},
            "threepid.medium.email.generator",
        ),
        (
            email_templates(generic={"matrixId": "/nonexistent/mxid.eml"}),
            "generic.matrixId",
        ),
        (
            {"view": {"session": {"onTokenSubmit": {"expired": "/nonexistent"}}}},
            "view.session.onTokenSubmit.expired",
        ),
    ],
)
def test_bad_notification_config_names_the_key(
    make_config: ConfigFactory, extra: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        create_app(make_config(**extra))


def test_a_medium_without_connector_is_a_warning_that_says_what_fails(
    make_config: ConfigFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger=notifications.__name__):
        client = app_with(make_config, clock)

    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "medium=msisdn: its validation and invite messages cannot be sent" in w
        for w in warnings
    ), warnings
    response = client.post(f"{V1}/validate/msisdn/requestToken", json=SMS_REQUEST)
    assert response.get_json()["errcode"] == "M_SEND_ERROR"


class FileSmsSender:
    """Another SMS provider, as an admin would add one: a single class."""

    medium: ClassVar[str] = "msisdn"
    name: ClassVar[str] = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def from_config(cls, config: Config) -> FileSmsSender:
        return cls(Path(config.base_dir) / "sms.log")

    def send(self, recipient: str, content: str) -> None:
        with self.path.open("a") as out:
            out.write(f"{recipient}: {content}\n")


def test_another_sms_provider_is_one_connector_class(
    make_config: ConfigFactory,
    clock: FakeClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(
        notifications.CONNECTORS, ("msisdn", "file"), FileSmsSender.from_config
    )
    raw = {"threepid": {"medium": {"msisdn": {"connector": "file"}}}}
    client = app_with(make_config, clock, **raw)

    response = client.post(
        f"{V1}/validate/msisdn/requestToken",
        json=SMS_REQUEST,
    )

    assert response.status_code == 200
    line = (tmp_path / "sms.log").read_text()
    assert re.fullmatch(r"33612345678: .* code is \d{6}\. .*\n", line)


class PlainSmsHandler:
    """A handler that writes its own text instead of rendering a template."""

    def __init__(self, settings: Any, connector: Any) -> None:
        self._connector = connector

    def notify(self, event: str, address: str, values: Any) -> None:
        self._connector.send(address, f"{event} {values.get('VALIDATION_TOKEN')}")


def test_notification_handler_key_chooses_the_medium_handler(
    make_config: ConfigFactory,
    clock: FakeClock,
    twilio: TwilioServer,
    mailbox: Mailbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(notifications.HANDLERS, "plain", PlainSmsHandler)
    raw = twilio_config(twilio)
    raw["notification"] = {"handler": {"msisdn": "plain"}}
    client = app_with(make_config, clock, **raw)

    client.post(f"{V1}/validate/msisdn/requestToken", json=SMS_REQUEST)
    request_token(client, "carol@example.org")

    assert re.fullmatch(r"session\.validation \d{6}", twilio.last().body)
    # email kept the built-in handler: its mail is the rendered template.
    assert "Confirm your email address" in str(mailbox.last()["Subject"])
