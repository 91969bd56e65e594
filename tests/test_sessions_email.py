from __future__ import annotations

import logging
import re
import threading
import urllib.parse
from typing import Any

import pytest
from flask.testing import FlaskClient

from conftest import V1, ConfigFactory, FakeClock, Mailbox, request_token, text_of
from mxisd_flask.app import create_app
from mxisd_flask.errors import NotifyError


def test_request_token_mails_a_token_before_answering(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    response = request_token(client, "Carol@Example.ORG")

    assert response.status_code == 200
    assert response.get_json()["sid"]
    sender, recipients, message = mailbox.messages[-1]
    assert recipients == ["carol@example.org"]
    assert sender == "id@example.org"
    assert message["From"] == "Example ID <id@example.org>"
    assert message["To"] == "carol@example.org"
    assert message["Message-ID"] and message["Date"]
    assert "submitToken?" in text_of(message)


def test_same_send_attempt_returns_same_sid_and_sends_nothing(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    first = request_token(client, "carol@example.org", attempt=1).get_json()["sid"]
    again = request_token(client, "carol@example.org", attempt=1).get_json()["sid"]

    assert again == first
    assert len(mailbox.messages) == 1


def test_higher_send_attempt_sends_again_with_same_sid(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    first = request_token(client, "carol@example.org", attempt=1).get_json()["sid"]
    second = request_token(client, "carol@example.org", attempt=2).get_json()["sid"]

    assert second == first
    assert len(mailbox.messages) == 2


@pytest.mark.parametrize(
    "address", ["a@@example.org", "no-at-sign", "a@b@example.org", "", "x" * 300]
)
def test_invalid_email_is_refused(
    client: FlaskClient, mailbox: Mailbox, address: str
) -> None:
    response = request_token(client, address)

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_INVALID_EMAIL"
    assert mailbox.messages == []


@pytest.mark.parametrize("secret", ["", "has space", "bad/char", "x" * 256])
def test_bad_client_secret_is_refused(client: FlaskClient, secret: str) -> None:
    response = request_token(client, "carol@example.org", secret=secret)

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_INVALID_PARAM"


@pytest.mark.parametrize(
    "body, errcode",
    [
        ({"email": "c@example.org", "send_attempt": 1}, "M_MISSING_PARAMS"),
        ({"client_secret": "s", "email": "c@example.org"}, "M_MISSING_PARAMS"),
        ({"client_secret": "s", "email": 5, "send_attempt": 1}, "M_INVALID_PARAM"),
        (
            {"client_secret": "s", "email": "c@example.org", "send_attempt": "x"},
            "M_INVALID_PARAM",
        ),
        (
            {"client_secret": "s", "email": "c@example.org", "send_attempt": -1},
            "M_INVALID_PARAM",
        ),
    ],
)
def test_malformed_request_token_bodies(
    client: FlaskClient, body: dict[str, object], errcode: str
) -> None:
    response = client.post(f"{V1}/validate/email/requestToken", json=body)

    assert response.status_code == 400
    assert response.get_json()["errcode"] == errcode


def test_submit_token_by_post_validates_session(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    sid = request_token(client, "carol@example.org").get_json()["sid"]
    query = {"sid": sid, "client_secret": "secret-1"}
    before = client.get(f"{V1}/3pid/getValidated3pid", query_string=query)
    assert before.get_json()["errcode"] == "M_SESSION_NOT_VALIDATED"

    response = client.post(
        f"{V1}/validate/email/submitToken",
        json={**query, "token": mailbox.token()},
    )

    assert response.get_json() == {"success": True}
    after = client.get(f"{V1}/3pid/getValidated3pid", query_string=query).get_json()
    assert after["medium"] == "email"
    assert after["address"] == "carol@example.org"
    assert isinstance(after["validated_at"], int)


def test_wrong_token_is_incorrect_and_does_not_validate(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    sid = request_token(client, "carol@example.org").get_json()["sid"]

    response = client.post(
        f"{V1}/validate/email/submitToken",
        json={"sid": sid, "client_secret": "secret-1", "token": "wrong"},
    )

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_TOKEN_INCORRECT"
    check = client.get(
        f"{V1}/3pid/getValidated3pid",
        query_string={"sid": sid, "client_secret": "secret-1"},
    )
    assert check.get_json()["errcode"] == "M_SESSION_NOT_VALIDATED"


def test_unknown_session_or_secret_is_no_valid_session(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    sid = request_token(client, "carol@example.org").get_json()["sid"]

    for query in (
        {"sid": "nope", "client_secret": "secret-1"},
        {"sid": sid, "client_secret": "other-secret"},
    ):
        response = client.get(f"{V1}/3pid/getValidated3pid", query_string=query)
        assert response.status_code == 404
        assert response.get_json()["errcode"] == "M_NO_VALID_SESSION"


def test_session_expires_after_a_day_of_inactivity(
    client: FlaskClient, mailbox: Mailbox, clock: FakeClock
) -> None:
    sid = request_token(client, "carol@example.org").get_json()["sid"]
    clock.advance(24 * 3600 + 1)

    response = client.post(
        f"{V1}/validate/email/submitToken",
        json={"sid": sid, "client_secret": "secret-1", "token": mailbox.token()},
    )

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_SESSION_EXPIRED"


def test_get_submit_token_renders_success_view(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    request_token(client, "carol@example.org")
    link = next(
        line for line in text_of(mailbox.last()).splitlines() if "submitToken?" in line
    )
    query = urllib.parse.urlsplit(link.strip()).query

    response = client.get(f"{V1}/validate/email/submitToken?{query}")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert "Address confirmed" in response.get_data(as_text=True)


def test_get_submit_token_failure_view_escapes_and_is_verbatim(
    make_config: ConfigFactory, clock: FakeClock, tmp_path: object, mailbox: Mailbox
) -> None:
    from pathlib import Path

    page = Path(str(tmp_path)) / "fail.html"
    page.write_text("  <p>FAILED: %ERROR%</p>\n\n")
    config = make_config(view={"session": {"onTokenSubmit": {"failure": str(page)}}})
    client = create_app(config, clock=clock).test_client()

    response = client.get(
        f"{V1}/validate/email/submitToken",
        query_string={"sid": "x", "client_secret": "s", "token": "<b>"},
    )

    assert response.status_code == 400
    assert response.get_data(as_text=True) == (
        "  <p>FAILED: No valid session was found matching that sid and "
        "client secret</p>\n\n"
    )


def test_get_submit_token_redirects_to_http_next_link_only(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    for next_link, expect_redirect in (
        ("https://app.example.org/done", True),
        ("javascript:alert(1)", False),
    ):
        mailbox.messages.clear()
        secret = "s-" + str(expect_redirect)
        sid = client.post(
            f"{V1}/validate/email/requestToken",
            json={
                "client_secret": secret,
                "email": "carol@example.org",
                "send_attempt": 1,
                "next_link": next_link,
            },
        ).get_json()["sid"]
        response = client.get(
            f"{V1}/validate/email/submitToken",
            query_string={
                "sid": sid,
                "client_secret": secret,
                "token": mailbox.token(),
            },
        )
        if expect_redirect:
            assert response.status_code == 302
            assert response.headers["Location"] == next_link
        else:
            assert response.status_code == 200
            assert "javascript" not in response.get_data(as_text=True)


def test_a_stored_next_link_with_a_control_character_is_not_followed(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    # requestToken refuses such links; a session stored by an older version
    # may still hold one, and a redirect to it cannot be sent.
    sid = request_token(client, "carol@example.org").get_json()["sid"]
    with client.application.extensions["mxisd"].db.write() as cur:
        cur.execute(
            "UPDATE sessions SET next_link = ? WHERE sid = ?",
            ("https://app.example.org/done\n", sid),
        )

    response = client.get(
        f"{V1}/validate/email/submitToken",
        query_string={
            "sid": sid,
            "client_secret": "secret-1",
            "token": mailbox.token(),
        },
    )

    assert response.status_code == 200
    assert "Location" not in response.headers


def test_unreachable_smtp_gives_send_error_and_leaves_no_session(
    make_config: ConfigFactory, clock: FakeClock, mailbox: Mailbox
) -> None:
    from conftest import free_port

    dead = {
        "threepid": {
            "medium": {"email": {"connectors": {"smtp": {"port": free_port()}}}}
        }
    }
    client = create_app(make_config(**dead), clock=clock).test_client()

    response = request_token(client, "carol@example.org")

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_EMAIL_SEND_ERROR"
    with client.application.extensions["mxisd"].db.read() as cur:
        cur.execute("SELECT COUNT(*) FROM sessions")
        assert cur.fetchone()[0] == 0


def test_disabled_validation_policy_forbids_sessions(
    make_config: ConfigFactory, clock: FakeClock, mailbox: Mailbox
) -> None:
    config = make_config(session={"policy": {"validation": {"enabled": False}}})
    client = create_app(config, clock=clock).test_client()

    response = request_token(client, "carol@example.org")

    assert response.status_code == 403
    assert response.get_json()["errcode"] == "M_FORBIDDEN"
    assert "session.policy.validation.enabled" in response.get_json()["error"]
    assert mailbox.messages == []


def test_logs_hold_no_secret_token_or_full_address(
    client: FlaskClient, mailbox: Mailbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sid = request_token(
        client, "carol@example.org", secret="very-secret-42"
    ).get_json()["sid"]
    token = mailbox.token()
    client.post(
        f"{V1}/validate/email/submitToken",
        json={"sid": sid, "client_secret": "very-secret-42", "token": token},
    )

    ours = [r for r in caplog.records if r.name.startswith("mxisd_flask")]
    text = "\n".join(r.getMessage() for r in ours if r.levelno >= logging.INFO)
    assert "session validated" in text
    assert "very-secret-42" not in text
    assert token not in text
    assert "carol@example.org" not in text


class HeldMailSender:
    """Takes mail; holds the first message until released, or fails on demand."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.held = threading.Event()
        self.release = threading.Event()
        self.fail = False

    def send(self, recipient: str, content: str) -> None:
        if not self.held.is_set():
            self.held.set()
            assert self.release.wait(10)
        if self.fail:
            raise NotifyError("the mail server is down")
        self.sent.append(content)


def test_the_same_request_during_the_send_gets_the_same_sid_and_no_mail(
    make_config: ConfigFactory, clock: FakeClock
) -> None:
    # Each request looked for the session before sending and stored it
    # after: a client's quick retries made sessions and mails of their own.
    sender = HeldMailSender()
    app = create_app(make_config(), clock=clock, mail_sender=sender)
    first: list[Any] = []

    def request_in_thread() -> None:
        first.append(request_token(app.test_client(), "carol@example.org"))
        app.extensions["mxisd"].db.close()

    thread = threading.Thread(target=request_in_thread)
    thread.start()
    assert sender.held.wait(10)
    second = request_token(app.test_client(), "carol@example.org")
    sender.release.set()
    thread.join()

    assert second.status_code == 200
    assert first[0].get_json() == second.get_json()
    assert len(sender.sent) == 1
    app.extensions["mxisd"].db.close()


def test_a_failed_resend_keeps_the_session_as_it_was(
    make_config: ConfigFactory, clock: FakeClock
) -> None:
    sender = HeldMailSender()
    sender.held.set()
    app = create_app(make_config(), clock=clock, mail_sender=sender)
    client = app.test_client()
    sid = request_token(client, "carol@example.org").get_json()["sid"]
    token = re.search(r"token=([\w-]+)", sender.sent[0])
    assert token

    sender.fail = True
    failed = request_token(client, "carol@example.org", attempt=2)
    sender.fail = False
    retried = request_token(client, "carol@example.org", attempt=2)

    assert failed.get_json()["errcode"] == "M_EMAIL_SEND_ERROR"
    assert retried.get_json() == {"sid": sid}
    assert len(sender.sent) == 2
    submitted = client.post(
        f"{V1}/validate/email/submitToken",
        json={"sid": sid, "client_secret": "secret-1", "token": token.group(1)},
    )
    assert submitted.get_json() == {"success": True}
    app.extensions["mxisd"].db.close()
