"""msisdn validation sessions over SMS, with the real twilio client talking
to a local server that speaks Twilio's Messages API."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from fixtures_twilio import ACCOUNT_SID, FROM_NUMBER, TwilioServer, twilio_config
from flask.testing import FlaskClient

from conftest import (
    V1,
    V2,
    ConfigFactory,
    FakeClock,
    Homeserver,
    bearer,
    free_port,
    homeserver_config,
    register,
)
from mxisd_flask.app import create_app
from mxisd_flask.config import ConfigError
from mxisd_flask.model import normalise_address, parse_msisdn

NUMBER = {"country": "FR", "phone_number": "06 12 34 56 78"}
E164 = "33612345678"


@pytest.fixture
def sms_client(
    make_config: ConfigFactory,
    twilio: TwilioServer,
    clock: FakeClock,
    homeserver: Homeserver,
) -> FlaskClient:
    config = make_config(**twilio_config(twilio), **homeserver_config(homeserver))
    return create_app(config, clock=clock).test_client()


def request_sms(
    client: FlaskClient,
    secret: str = "secret-1",
    attempt: int = 1,
    prefix: str = V1,
    headers: dict[str, str] | None = None,
    number: dict[str, str] | None = None,
) -> Any:
    body = {"client_secret": secret, "send_attempt": attempt, **(number or NUMBER)}
    return client.post(
        f"{prefix}/validate/msisdn/requestToken", json=body, headers=headers
    )


def submit(client: FlaskClient, sid: str, token: str, secret: str = "secret-1") -> Any:
    return client.post(
        f"{V1}/validate/msisdn/submitToken",
        json={"sid": sid, "client_secret": secret, "token": token},
    )


def session_count(client: FlaskClient) -> int:
    with client.application.extensions["mxisd"].db.read() as cur:
        cur.execute("SELECT COUNT(*) FROM sessions")
        return int(cur.fetchone()[0])


def test_request_token_texts_a_six_digit_code(
    sms_client: FlaskClient, twilio: TwilioServer
) -> None:
    response = request_sms(sms_client)

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["sid"]
    sms = twilio.last()
    assert sms.to == f"+{E164}"
    assert sms.from_ == FROM_NUMBER
    assert len(twilio.code()) == 6
    assert "Example.org" in sms.body


def test_submitted_code_validates_the_normalised_number(
    sms_client: FlaskClient, twilio: TwilioServer
) -> None:
    sid = request_sms(sms_client).get_json()["sid"]

    response = submit(sms_client, sid, twilio.code())

    assert response.get_json() == {"success": True}
    found = sms_client.get(
        f"{V1}/3pid/getValidated3pid",
        query_string={"sid": sid, "client_secret": "secret-1"},
    ).get_json()
    assert (found["medium"], found["address"]) == ("msisdn", E164)
    assert isinstance(found["validated_at"], int)


def test_normalised_number_is_what_the_stores_compare() -> None:
    assert parse_msisdn("FR", "06 12 34 56 78") == E164
    assert parse_msisdn("us", "+33 (6) 12-34-56-78") == E164
    assert normalise_address("msisdn", "+33 6 12 34 56 78") == E164


@pytest.mark.parametrize(
    "number",
    [
        {"country": "FR", "phone_number": "12"},
        {"country": "FR", "phone_number": "not a number"},
        {"country": "XX", "phone_number": "0612345678"},
        {"country": "FRA", "phone_number": "0612345678"},
        {"country": "GB", "phone_number": "07700 900750"},
        {"country": "FR", "phone_number": "0" * 100},
    ],
)
def test_invalid_number_is_invalid_address_and_sends_nothing(
    sms_client: FlaskClient, twilio: TwilioServer, number: dict[str, str]
) -> None:
    response = request_sms(sms_client, number=number)

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_INVALID_ADDRESS"
    assert twilio.requests == 0
    assert session_count(sms_client) == 0


@pytest.mark.parametrize(
    "body, errcode",
    [
        ({"client_secret": "s", "phone_number": "0612345678", "send_attempt": 1},
         "M_MISSING_PARAMS"),
        ({"client_secret": "s", "country": "FR", "send_attempt": 1},
         "M_MISSING_PARAMS"),
        ({"client_secret": "s", "country": "FR", "phone_number": 612345678,
          "send_attempt": 1}, "M_INVALID_PARAM"),
        ({"client_secret": "s", "country": "FR", "phone_number": "0612345678"},
         "M_MISSING_PARAMS"),
    ],
)  # fmt: skip
def test_malformed_request_token_bodies(
    sms_client: FlaskClient, body: dict[str, Any], errcode: str
) -> None:
    response = sms_client.post(f"{V1}/validate/msisdn/requestToken", json=body)

    assert response.status_code == 400
    assert response.get_json()["errcode"] == errcode


def test_same_send_attempt_returns_same_sid_and_sends_nothing(
    sms_client: FlaskClient, twilio: TwilioServer
) -> None:
    first = request_sms(sms_client).get_json()["sid"]
    again = request_sms(
        sms_client, number={"country": "FR", "phone_number": "+33 6 12 34 56 78"}
    ).get_json()

    assert again["sid"] == first
    assert len(twilio.messages) == 1


def test_higher_send_attempt_texts_a_fresh_code_and_voids_the_old(
    sms_client: FlaskClient, twilio: TwilioServer
) -> None:
    first = request_sms(sms_client).get_json()["sid"]
    old_code = twilio.code()
    second = request_sms(sms_client, attempt=2).get_json()["sid"]
    new_code = twilio.code()

    assert second == first
    assert len(twilio.messages) == 2
    if old_code != new_code:  # one chance in a million they are equal
        assert submit(sms_client, first, old_code).status_code == 400
    assert submit(sms_client, first, new_code).get_json() == {"success": True}


def test_failed_send_is_send_error_and_leaves_no_half_session(
    sms_client: FlaskClient, twilio: TwilioServer
) -> None:
    twilio.fail(400, 21211, "The 'To' number +33612345678 is not valid.")

    refused = request_sms(sms_client)

    assert refused.status_code == 400
    assert refused.get_json()["errcode"] == "M_SEND_ERROR"
    assert session_count(sms_client) == 0
    failed_code = twilio.code(twilio.refused[-1])
    twilio.recover()
    sid = request_sms(sms_client).get_json()["sid"]
    assert len(twilio.messages) == 1
    fresh = twilio.code()
    if fresh != failed_code:
        wrong = submit(sms_client, sid, failed_code)
        assert wrong.get_json()["errcode"] == "M_TOKEN_INCORRECT"
    assert submit(sms_client, sid, fresh).get_json() == {"success": True}


def test_failed_resend_keeps_the_delivered_code_only(
    sms_client: FlaskClient, twilio: TwilioServer
) -> None:
    sid = request_sms(sms_client).get_json()["sid"]
    delivered = twilio.code()
    twilio.fail(500, 20500, "Internal Server Error")

    assert request_sms(sms_client, attempt=2).get_json()["errcode"] == "M_SEND_ERROR"

    failed_code = twilio.code(twilio.refused[-1])
    if failed_code != delivered:
        assert submit(sms_client, sid, failed_code).status_code == 400
    assert submit(sms_client, sid, delivered).get_json() == {"success": True}


def test_unreachable_twilio_is_send_error(
    make_config: ConfigFactory, twilio: TwilioServer, clock: FakeClock
) -> None:
    dead = twilio_config(twilio, baseUrl=f"http://127.0.0.1:{free_port()}")
    client = create_app(make_config(**dead), clock=clock).test_client()

    response = request_sms(client)

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_SEND_ERROR"
    assert session_count(client) == 0


def test_wrong_credentials_are_send_error(
    make_config: ConfigFactory, twilio: TwilioServer, clock: FakeClock
) -> None:
    config = make_config(**twilio_config(twilio, auth_token="wrong"))
    client = create_app(config, clock=clock).test_client()

    response = request_sms(client)

    assert response.get_json()["errcode"] == "M_SEND_ERROR"
    assert twilio.requests == 1 and twilio.messages == []


def test_camel_case_credential_keys_are_accepted(
    make_config: ConfigFactory, twilio: TwilioServer, clock: FakeClock
) -> None:
    raw = twilio_config(twilio)
    connector = raw["threepid"]["medium"]["msisdn"]["connectors"]["twilio"]
    connector["accountSid"] = connector.pop("account_sid")
    connector["authToken"] = connector.pop("auth_token")
    client = create_app(make_config(**raw), clock=clock).test_client()

    assert request_sms(client).status_code == 200
    assert len(twilio.messages) == 1


@pytest.mark.parametrize(
    "connector, key",
    [
        ({"account_sid": ACCOUNT_SID, "number": FROM_NUMBER}, "auth_token"),
        ({"auth_token": "t", "number": FROM_NUMBER}, "account_sid"),
        ({"account_sid": ACCOUNT_SID, "auth_token": "t"}, "number"),
        (
            {"account_sid": "a", "auth_token": "t", "number": "1", "baseUrl": "ftp:x"},
            "baseUrl",
        ),
    ],
)
def test_incomplete_twilio_config_names_the_key(
    make_config: ConfigFactory, connector: dict[str, str], key: str
) -> None:
    raw = {"threepid": {"medium": {"msisdn": {"connectors": {"twilio": connector}}}}}

    with pytest.raises(ConfigError, match=rf"connectors\.twilio\.{key}"):
        create_app(make_config(**raw))


def test_without_an_sms_connector_msisdn_is_send_error(
    client: FlaskClient,
) -> None:
    response = request_sms(client)

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_SEND_ERROR"
    assert "cannot send msisdn" in response.get_json()["error"]


def test_wrong_codes_void_the_session_token(
    sms_client: FlaskClient, twilio: TwilioServer
) -> None:
    sid = request_sms(sms_client).get_json()["sid"]
    code = twilio.code()
    wrong = f"{(int(code) + 1) % 10**6:06d}"

    for _ in range(5):
        assert submit(sms_client, sid, wrong).get_json()["errcode"] == (
            "M_TOKEN_INCORRECT"
        )

    assert submit(sms_client, sid, code).get_json()["errcode"] == "M_TOKEN_INCORRECT"
    request_sms(sms_client, attempt=2)
    assert submit(sms_client, sid, twilio.code()).get_json() == {"success": True}


def test_session_expires(
    sms_client: FlaskClient, twilio: TwilioServer, clock: FakeClock
) -> None:
    sid = request_sms(sms_client).get_json()["sid"]
    clock.advance(24 * 3600 + 1)

    response = submit(sms_client, sid, twilio.code())

    assert response.get_json()["errcode"] == "M_SESSION_EXPIRED"


def test_get_submit_token_shows_success_then_expired_pages(
    sms_client: FlaskClient, twilio: TwilioServer, clock: FakeClock
) -> None:
    sid = request_sms(sms_client).get_json()["sid"]
    query = {"sid": sid, "client_secret": "secret-1", "token": twilio.code()}

    ok = sms_client.get(f"{V1}/validate/msisdn/submitToken", query_string=query)
    clock.advance(24 * 3600 + 1)
    late = sms_client.get(f"{V1}/validate/msisdn/submitToken", query_string=query)

    assert ok.status_code == 200 and "Address confirmed" in ok.get_data(as_text=True)
    assert late.status_code == 400
    assert late.mimetype == "text/html"
    assert "expired" in late.get_data(as_text=True)


@pytest.mark.parametrize("prefix", [V1, V2])
def test_get_submit_token_pages_are_the_admin_templates(
    make_config: ConfigFactory,
    twilio: TwilioServer,
    clock: FakeClock,
    tmp_path: Path,
    prefix: str,
) -> None:
    pages = {}
    for name in ("success", "failure"):
        pages[name] = tmp_path / f"{name}.html"
        pages[name].write_text(f"<p>{name.upper()} %ERROR%</p>")
    view = {"session": {"onTokenSubmit": {k: str(v) for k, v in pages.items()}}}
    config = make_config(view=view, **twilio_config(twilio))
    client = create_app(config, clock=clock).test_client()
    sid = request_sms(client).get_json()["sid"]
    query = {"sid": sid, "client_secret": "secret-1"}
    url = f"{prefix}/validate/msisdn/submitToken"
    code = twilio.code()

    wrong = client.get(url, query_string={**query, "token": f"{code}0"})
    right = client.get(url, query_string={**query, "token": code})

    assert wrong.status_code == 400
    assert wrong.get_data(as_text=True) == "<p>FAILURE The token is incorrect</p>"
    # The success page has no %ERROR%: the marker stays as the admin wrote it.
    assert right.status_code == 200
    assert right.get_data(as_text=True) == "<p>SUCCESS %ERROR%</p>"


def test_form_encoded_v1_request_token(
    sms_client: FlaskClient, twilio: TwilioServer
) -> None:
    response = sms_client.post(
        f"{V1}/validate/msisdn/requestToken",
        data={"client_secret": "s1", "send_attempt": "1", **NUMBER},
    )

    assert response.status_code == 200
    assert twilio.last().to == f"+{E164}"


def test_v2_flow_binds_and_lookups_find_the_number(
    sms_client: FlaskClient, twilio: TwilioServer, homeserver: Homeserver
) -> None:
    auth = bearer(register(sms_client, homeserver, "@dan:example.org"))
    unauthenticated = request_sms(sms_client, prefix=V2)
    assert unauthenticated.status_code == 401

    sid = request_sms(sms_client, prefix=V2, headers=auth).get_json()["sid"]
    submitted = sms_client.post(
        f"{V2}/validate/msisdn/submitToken",
        json={"sid": sid, "client_secret": "secret-1", "token": twilio.code()},
        headers=auth,
    )
    bound = sms_client.post(
        f"{V2}/3pid/bind",
        json={"sid": sid, "client_secret": "secret-1", "mxid": "@dan:example.org"},
        headers=auth,
    )

    assert submitted.get_json() == {"success": True}
    assert bound.status_code == 200
    assert (bound.get_json()["medium"], bound.get_json()["address"]) == (
        "msisdn",
        E164,
    )
    lookup = sms_client.get(
        f"{V1}/lookup", query_string={"medium": "msisdn", "address": E164}
    ).get_json()
    assert lookup["mxid"] == "@dan:example.org"


def test_unbind_with_the_session_removes_the_binding(
    sms_client: FlaskClient, twilio: TwilioServer
) -> None:
    sid = request_sms(sms_client).get_json()["sid"]
    submit(sms_client, sid, twilio.code())
    secret = {"sid": sid, "client_secret": "secret-1"}
    sms_client.post(f"{V1}/3pid/bind", json={**secret, "mxid": "@dan:example.org"})

    response = sms_client.post(
        f"{V1}/3pid/unbind",
        json={
            **secret,
            "mxid": "@dan:example.org",
            "threepid": {"medium": "msisdn", "address": E164},
        },
    )

    assert response.status_code == 200
    lookup = sms_client.get(
        f"{V1}/lookup", query_string={"medium": "msisdn", "address": E164}
    )
    assert lookup.get_json() == {}


def test_disabled_validation_policy_forbids_msisdn_sessions(
    make_config: ConfigFactory, twilio: TwilioServer, clock: FakeClock
) -> None:
    config = make_config(
        session={"policy": {"validation": {"enabled": False}}},
        **twilio_config(twilio),
    )
    client = create_app(config, clock=clock).test_client()

    response = request_sms(client)

    assert response.status_code == 403
    assert response.get_json()["errcode"] == "M_FORBIDDEN"
    assert "session.policy.validation.enabled" in response.get_json()["error"]
    assert twilio.requests == 0


def test_logs_hold_no_code_or_full_number(
    sms_client: FlaskClient, twilio: TwilioServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sid = request_sms(sms_client).get_json()["sid"]
    submit(sms_client, sid, twilio.code())
    twilio.fail()
    request_sms(sms_client, secret="other")

    text = "\n".join(
        r.getMessage() for r in caplog.records if r.levelno >= logging.INFO
    )
    assert "session validated" in text and "notification failed" in text
    assert E164 not in text
    assert twilio.code() not in text
    assert ACCOUNT_SID not in text


INVITE = {
    "medium": "msisdn",
    "address": E164,
    "room_id": "!room:example.org",
    "sender": "@alice:example.org",
    "room_name": "Book club",
    "sender_display_name": "Alice\nReply STOP\r\nto 12345",
}


def test_store_invite_to_a_number_texts_it_and_stores_it(
    sms_client: FlaskClient, twilio: TwilioServer
) -> None:
    response = sms_client.post(f"{V1}/store-invite", json=INVITE)

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["display_name"] == "+336...78"
    sms = twilio.last()
    assert sms.to == f"+{E164}"
    assert "Book club" in sms.body
    # A display name cannot break the SMS into lines of its own.
    assert "\n" not in sms.body and "\r" not in sms.body
    assert "Alice Reply STOP to 12345" in sms.body
    with sms_client.application.extensions["mxisd"].db.read() as cur:
        cur.execute("SELECT medium, address FROM invites")
        assert cur.fetchall() == [("msisdn", E164)]


def test_failed_invite_sms_stores_no_invite(
    sms_client: FlaskClient, twilio: TwilioServer
) -> None:
    twilio.fail()

    response = sms_client.post(f"{V1}/store-invite", json=INVITE)

    assert response.get_json()["errcode"] == "M_SEND_ERROR"
    with sms_client.application.extensions["mxisd"].db.read() as cur:
        cur.execute("SELECT COUNT(*) FROM invites")
        assert cur.fetchone()[0] == 0


def test_invite_to_a_malformed_number_is_invalid_address(
    sms_client: FlaskClient, twilio: TwilioServer
) -> None:
    response = sms_client.post(
        f"{V1}/store-invite", json={**INVITE, "address": "+33 abc"}
    )

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_INVALID_ADDRESS"
    assert twilio.requests == 0
