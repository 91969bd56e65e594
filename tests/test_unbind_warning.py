"""session.policy.unbind.fraudulent.sendWarning: an unbind without proof of
ownership warns the 3PID's owner, by mail (real SMTP) or SMS (local Twilio)."""

from __future__ import annotations

from typing import Any

import pytest
from fixtures_twilio import TwilioServer, twilio_config
from flask.testing import FlaskClient

from conftest import (
    V1,
    ConfigFactory,
    FakeClock,
    Mailbox,
    request_token,
    text_of,
    validated_session,
)
from mxisd_flask.app import create_app

CAROL = "@carol:example.org"


def bind_carol(client: FlaskClient, mailbox: Mailbox) -> str:
    sid = validated_session(client, mailbox, "carol@example.org")
    bound = client.post(
        f"{V1}/3pid/bind",
        json={"sid": sid, "client_secret": "secret-1", "mxid": CAROL},
    )
    assert bound.status_code == 200
    mailbox.messages.clear()
    return sid


def unbind(client: FlaskClient, **proof: Any) -> Any:
    return client.post(
        f"{V1}/3pid/unbind",
        json={
            **proof,
            "mxid": CAROL,
            "threepid": {"medium": "email", "address": "Carol@example.org"},
        },
    )


def still_bound(client: FlaskClient) -> bool:
    found = client.get(
        f"{V1}/lookup",
        query_string={"medium": "email", "address": "carol@example.org"},
    ).get_json()
    return bool(found.get("mxid") == CAROL)


def assert_warned(mailbox: Mailbox) -> None:
    assert [m[1] for m in mailbox.messages] == [["carol@example.org"]]
    message = mailbox.last()
    assert "unlink" in str(message["Subject"])
    assert CAROL in text_of(message)


def test_unbind_with_a_session_of_another_address_warns_the_owner(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    bind_carol(client, mailbox)
    other = validated_session(client, mailbox, "mallory@example.org", secret="m-1")
    mailbox.messages.clear()

    response = unbind(client, sid=other, client_secret="m-1")

    assert response.status_code == 403
    assert response.get_json()["errcode"] == "M_FORBIDDEN"
    assert_warned(mailbox)
    assert still_bound(client)


def test_unbind_with_a_wrong_secret_warns_the_owner(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    sid = bind_carol(client, mailbox)

    response = unbind(client, sid=sid, client_secret="guessed")

    assert response.status_code == 404
    assert response.get_json()["errcode"] == "M_NO_VALID_SESSION"
    assert_warned(mailbox)
    assert still_bound(client)


def test_unbind_with_an_unvalidated_session_warns_the_owner(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    bind_carol(client, mailbox)
    sid = request_token(client, "carol@example.org", secret="m-2").get_json()["sid"]
    mailbox.messages.clear()

    response = unbind(client, sid=sid, client_secret="m-2")

    assert response.get_json()["errcode"] == "M_SESSION_NOT_VALIDATED"
    assert_warned(mailbox)


def test_proven_unbind_sends_no_warning(client: FlaskClient, mailbox: Mailbox) -> None:
    sid = bind_carol(client, mailbox)

    response = unbind(client, sid=sid, client_secret="secret-1")

    assert response.status_code == 200
    assert mailbox.messages == []
    assert not still_bound(client)


def test_unbound_address_gets_no_mail(client: FlaskClient, mailbox: Mailbox) -> None:
    response = unbind(client, sid="nope", client_secret="guessed")

    assert response.status_code == 404
    assert mailbox.messages == []


def test_unbind_without_a_session_sends_no_warning_until_signed_unbind(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    bind_carol(client, mailbox)

    response = unbind(client)

    assert response.status_code == 403
    assert mailbox.messages == []


def test_send_warning_false_sends_nothing(
    make_config: ConfigFactory, clock: FakeClock, mailbox: Mailbox
) -> None:
    policy = {"policy": {"unbind": {"fraudulent": {"sendWarning": False}}}}
    client = create_app(make_config(session=policy), clock=clock).test_client()
    sid = bind_carol(client, mailbox)

    response = unbind(client, sid=sid, client_secret="guessed")

    assert response.status_code == 404
    assert mailbox.messages == []


@pytest.fixture
def sms_client(
    make_config: ConfigFactory, twilio: TwilioServer, clock: FakeClock
) -> FlaskClient:
    return create_app(make_config(**twilio_config(twilio)), clock=clock).test_client()


def bind_number(client: FlaskClient, twilio: TwilioServer) -> str:
    sid = client.post(
        f"{V1}/validate/msisdn/requestToken",
        json={
            "client_secret": "secret-1",
            "send_attempt": 1,
            "country": "FR",
            "phone_number": "0612345678",
        },
    ).get_json()["sid"]
    proof = {"sid": sid, "client_secret": "secret-1"}
    client.post(
        f"{V1}/validate/msisdn/submitToken", json={**proof, "token": twilio.code()}
    )
    bound = client.post(f"{V1}/3pid/bind", json={**proof, "mxid": CAROL})
    assert bound.status_code == 200
    return str(sid)


def unbind_number(client: FlaskClient, sid: str) -> Any:
    return client.post(
        f"{V1}/3pid/unbind",
        json={
            "sid": sid,
            "client_secret": "guessed",
            "mxid": CAROL,
            "threepid": {"medium": "msisdn", "address": "33612345678"},
        },
    )


def test_fraudulent_unbind_of_a_number_warns_by_sms(
    sms_client: FlaskClient, twilio: TwilioServer
) -> None:
    sid = bind_number(sms_client, twilio)

    response = unbind_number(sms_client, sid)

    assert response.get_json()["errcode"] == "M_NO_VALID_SESSION"
    assert len(twilio.messages) == 2
    assert twilio.last().to == "+33612345678"
    assert CAROL in twilio.last().body and "unlink" in twilio.last().body


def test_a_failed_warning_does_not_change_the_answer(
    sms_client: FlaskClient, twilio: TwilioServer
) -> None:
    sid = bind_number(sms_client, twilio)
    twilio.fail()

    response = unbind_number(sms_client, sid)

    assert response.status_code == 404
    assert response.get_json()["errcode"] == "M_NO_VALID_SESSION"
    assert len(twilio.refused) == 1
