"""Regression tests from trying to break the server: each input once gave a
500, a stray mail, or a leak."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pytest
from flask.testing import FlaskClient

from conftest import V1, V2, Homeserver, Mailbox, bearer, register, text_of
from mxisd_flask.errors import FetcherError
from mxisd_flask.outbound import OutboundClient

INVITE = {
    "medium": "email",
    "address": "erin@example.org",
    "room_id": "!room:example.org",
    "sender": "@alice:example.org",
}


def test_non_ascii_values_are_mailed_encoded(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    response = client.post(
        f"{V1}/store-invite",
        json={
            **INVITE,
            "room_name": "Café " + "x" * 2000,
            "sender_display_name": "Zoë",
        },
    )

    assert response.status_code == 200
    raw = mailbox.raw[-1]
    assert raw.isascii()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    message = mailbox.last()
    assert message["Subject"].startswith("Zoë invited you to Café")
    assert "Café" in text_of(message)


@pytest.mark.parametrize("room_name", ["x" * 2000, "word " * 400])
def test_long_ascii_values_are_mailed_in_short_lines(
    client: FlaskClient, mailbox: Mailbox, room_name: str
) -> None:
    # Once sent as 7bit with the 2000-character line the SMTP server refused.
    response = client.post(
        f"{V1}/store-invite", json={**INVITE, "room_name": room_name}
    )

    assert response.status_code == 200
    raw = mailbox.raw[-1]
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert room_name in text_of(mailbox.last())


def test_internationalised_domain_is_sent_as_idna(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    response = client.post(
        f"{V1}/validate/email/requestToken",
        json={"client_secret": "s1", "email": "zoe@exämple.com", "send_attempt": 1},
    )

    assert response.status_code == 200
    assert mailbox.messages[-1][1] == ["zoe@xn--exmple-cua.com"]


@pytest.mark.parametrize(
    "path, body",
    [
        ("/3pid/bind", '{"sid": "\\ud800", "client_secret": "abc", "mxid": "@a:b"}'),
        ("/3pid/bind", '{"sid": "x\\u0000", "client_secret": "abc", "mxid": "@a:b"}'),
        ("/bulk_lookup", '{"threepids": [["email", "\\udfff"]]}'),
        (
            "/store-invite",
            '{"medium": "email", "address": "e@example.org", '
            '"room_id": "!r:b", "sender": "@a:b", "room_name": "\\ud83d"}',
        ),
        (
            "/validate/email/submitToken",
            '{"sid": "\\u0000", "client_secret": "a", "token": "t"}',
        ),
    ],
)
def test_nul_and_lone_surrogates_in_json_are_bad_json(
    client: FlaskClient, mailbox: Mailbox, path: str, body: str
) -> None:
    response = client.post(f"{V1}{path}", data=body, content_type="application/json")

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_BAD_JSON"
    assert mailbox.messages == []


def test_a_valid_surrogate_pair_is_accepted(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    body = (
        '{"medium": "email", "address": "e@example.org", "room_id": "!r:b", '
        '"sender": "@a:b", "room_name": "\\ud83d\\ude00"}'
    )
    response = client.post(
        f"{V1}/store-invite", data=body, content_type="application/json"
    )

    assert response.status_code == 200
    assert "\U0001f600" in mailbox.last()["Subject"]


@pytest.mark.parametrize(
    "path",
    [
        f"{V2}/account?access_token=%00",
        f"{V1}/3pid/getValidated3pid?sid=%00&client_secret=a",
        f"{V1}/pubkey/ephemeral/isvalid?public_key=a%00",
        f"{V1}/lookup?medium=email&address=a%00@example.org",
    ],
)
def test_nul_in_query_is_invalid_param(client: FlaskClient, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_INVALID_PARAM"


@pytest.mark.parametrize(
    "next_link",
    [
        "https://evil.example\r\nSet-Cookie: x=1",
        "https://a/ b",
        "https://a/" + "x" * 3000,
    ],
)
def test_bad_next_link_is_refused_before_any_mail(
    client: FlaskClient, mailbox: Mailbox, next_link: str
) -> None:
    response = client.post(
        f"{V1}/validate/email/requestToken",
        json={
            "client_secret": "s",
            "email": "e@example.org",
            "send_attempt": 1,
            "next_link": next_link,
        },
    )

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_INVALID_PARAM"
    assert mailbox.messages == []


@pytest.mark.parametrize("attempt", ["²", "٣", "9" * 5000, "1.5", True, 1.0])
def test_odd_send_attempts_are_invalid_param(
    client: FlaskClient, mailbox: Mailbox, attempt: object
) -> None:
    response = client.post(
        f"{V1}/validate/email/requestToken",
        json={"client_secret": "s", "email": "e@example.org", "send_attempt": attempt},
    )

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_INVALID_PARAM"


@pytest.mark.parametrize(
    "room_id", ["!r:b\r\nBcc: x@evil.example", "room:b", "!:b", "!r:" + "b" * 300]
)
def test_malformed_room_id_is_refused_before_any_mail(
    client: FlaskClient, mailbox: Mailbox, room_id: str
) -> None:
    response = client.post(f"{V1}/store-invite", json={**INVITE, "room_id": room_id})

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_INVALID_PARAM"
    assert mailbox.messages == []


@pytest.mark.parametrize(
    "server_name",
    [
        "127.0.0.1:99999",
        "127.0.0.1:-1",
        "127.0.0.1:80 ",
        "a.example:9:127.0.0.1",
        "evil.example/path",
        "user@host",
        "",
        "x" * 300,
        "127.0.0.1\n:9999",
        "example.org\n",
    ],
)
def test_malformed_server_name_is_invalid_param(
    client: FlaskClient, server_name: str
) -> None:
    response = client.post(
        f"{V2}/account/register",
        json={"access_token": "t", "matrix_server_name": server_name},
    )

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_INVALID_PARAM"


@pytest.mark.parametrize(
    "url",
    [
        "https://100.100.100.200/",
        "https://100.64.0.1:9999/",
        "https://[2002:7f00:1::]/",
        "https://[::ffff:10.0.0.1]/",
        "https://0.0.0.0/",
        "https://224.0.0.1/",
        "https://host:99999/",
    ],
)
def test_shared_and_embedded_internal_addresses_are_refused(url: str) -> None:
    with pytest.raises(FetcherError):
        OutboundClient((), timeout_s=1).check_target(url)


def test_failed_openid_check_does_not_log_the_token(
    client: FlaskClient, homeserver: Homeserver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    homeserver.close()  # the homeserver is down: requests raises

    response = client.post(
        f"{V2}/account/register",
        json={"access_token": "openid-secret-77", "matrix_server_name": "example.org"},
    )

    assert response.status_code == 401
    assert "openid check failed" in caplog.text
    assert "openid-secret-77" not in caplog.text


def test_bearer_scheme_is_case_insensitive(
    client: FlaskClient, homeserver: Homeserver
) -> None:
    token = register(client, homeserver, "@carol:example.org")

    response = client.get(f"{V2}/account", headers={"Authorization": f"bearer {token}"})

    assert response.get_json() == {"user_id": "@carol:example.org"}
    assert client.get(f"{V2}/account", headers=bearer("x")).status_code == 401


def test_bulk_lookup_is_capped(client: FlaskClient) -> None:
    threepids = [["email", f"u{i}@example.org"] for i in range(10001)]

    response = client.post(f"{V1}/bulk_lookup", json={"threepids": threepids})

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_INVALID_PARAM"


@pytest.mark.parametrize(
    "path, field, value",
    [
        ("/validate/email/requestToken", "client_secret", "s\n"),
        ("/validate/email/requestToken", "next_link", "https://a.example/\n"),
        ("/store-invite", "sender", "@a:example.org\n"),
        ("/store-invite", "room_id", "!r:example.org\n"),
        ("/3pid/bind", "mxid", "@a:example.org\n"),
    ],
)
def test_a_trailing_newline_is_invalid_param(
    client: FlaskClient, mailbox: Mailbox, path: str, field: str, value: str
) -> None:
    bodies: dict[str, Mapping[str, object]] = {
        "/validate/email/requestToken": {
            "client_secret": "s",
            "email": "e@example.org",
            "send_attempt": 1,
        },
        "/store-invite": INVITE,
        "/3pid/bind": {"sid": "s", "client_secret": "c", "mxid": "@a:example.org"},
    }

    response = client.post(f"{V1}{path}", json={**bodies[path], field: value})

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_INVALID_PARAM"
    assert mailbox.messages == []


@pytest.mark.parametrize("address", ["²²²²²²²²", "٤٤١٦٣٢٩٦٠٠٠١", "４４１６３２９６０"])
def test_msisdn_of_non_ascii_digits_is_invalid_address(
    client: FlaskClient, address: str
) -> None:
    # str.isdigit() says yes to superscripts and other scripts' digits.
    response = client.post(
        f"{V1}/store-invite", json={**INVITE, "medium": "msisdn", "address": address}
    )

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_INVALID_ADDRESS"
