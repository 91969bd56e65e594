from __future__ import annotations

import logging

import pytest
from flask import Flask, request
from flask.testing import FlaskClient

from conftest import V1, V2
from mxisd_flask import errors

TABLE = [
    (errors.InvalidParam, 400, "M_INVALID_PARAM"),
    (errors.MissingParams, 400, "M_MISSING_PARAMS"),
    (errors.BadJson, 400, "M_BAD_JSON"),
    (errors.NotJson, 400, "M_NOT_JSON"),
    (errors.InvalidEmail, 400, "M_INVALID_EMAIL"),
    (errors.InvalidAddress, 400, "M_INVALID_ADDRESS"),
    (errors.InvalidPepper, 400, "M_INVALID_PEPPER"),
    (errors.TokenIncorrect, 400, "M_TOKEN_INCORRECT"),
    (errors.SessionNotValidated, 400, "M_SESSION_NOT_VALIDATED"),
    (errors.SessionExpired, 400, "M_SESSION_EXPIRED"),
    (errors.ThreePidInUse, 400, "M_THREEPID_IN_USE"),
    (errors.EmailSendError, 400, "M_EMAIL_SEND_ERROR"),
    (errors.SendError, 400, "M_SEND_ERROR"),
    (errors.UnsupportedMedium, 400, "M_UNRECOGNIZED"),
    (errors.Unauthorized, 401, "M_UNAUTHORIZED"),
    (errors.UnknownToken, 401, "M_UNKNOWN_TOKEN"),
    (errors.Forbidden, 403, "M_FORBIDDEN"),
    (errors.TermsNotSigned, 403, "M_TERMS_NOT_SIGNED"),
    (errors.NotFound, 404, "M_NOT_FOUND"),
    (errors.NoValidSession, 404, "M_NO_VALID_SESSION"),
    (errors.Unrecognized, 404, "M_UNRECOGNIZED"),
    (errors.LimitExceeded, 429, "M_LIMIT_EXCEEDED"),
    (errors.Unknown, 500, "M_UNKNOWN"),
]


@pytest.mark.parametrize("cls, status, errcode", TABLE)
def test_each_error_has_its_status_and_errcode(
    cls: type[errors.MatrixError], status: int, errcode: str
) -> None:
    error = cls("message", extra_field=1)

    assert error.status == status
    assert error.to_json() == {"errcode": errcode, "error": "message", "extra_field": 1}


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("get", "/nothing/here", 404),
        ("get", f"{V2}/not-an-endpoint", 404),
        ("delete", f"{V1}/lookup", 405),
        ("get", f"{V1}/3pid/bind", 405),
    ],
)
def test_unknown_paths_and_methods_are_unrecognized(
    client: FlaskClient, method: str, path: str, status: int
) -> None:
    response = getattr(client, method)(path)

    assert response.status_code == status
    assert response.get_json()["errcode"] == "M_UNRECOGNIZED"


@pytest.mark.parametrize(
    "data, errcode",
    [
        ("{not json", "M_NOT_JSON"),
        ("[1, 2]", "M_BAD_JSON"),
        ('"text"', "M_BAD_JSON"),
        ("NaN", "M_NOT_JSON"),
        ("", "M_NOT_JSON"),
        ("\xff\xfe", "M_NOT_JSON"),
        ("[" * 100000, "M_NOT_JSON"),
    ],
)
def test_bad_bodies_get_json_errors_not_500(
    client: FlaskClient, data: str, errcode: str
) -> None:
    for path in (
        "/validate/email/requestToken",
        "/3pid/bind",
        "/store-invite",
        "/bulk_lookup",
    ):
        response = client.post(
            f"{V1}{path}", data=data, content_type="application/json"
        )
        assert response.status_code == 400, path
        assert response.get_json()["errcode"] == errcode, path


def test_oversized_body_is_refused(client: FlaskClient) -> None:
    response = client.post(
        f"{V1}/bulk_lookup", data="x" * (2 << 20), content_type="application/json"
    )

    assert response.status_code == 413
    assert response.get_json()["errcode"]


def test_cors_headers_and_options_everywhere(client: FlaskClient) -> None:
    for path in (f"{V2}/lookup", "/anything/at/all", f"{V1}/pubkey/ed25519:0"):
        response = client.options(path)
        assert response.status_code == 200
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    assert client.get("/missing").headers["Access-Control-Allow-Origin"] == "*"


def test_status_versions_and_pubkeys(client: FlaskClient) -> None:
    assert client.get(V2).get_json() == {}
    assert client.get(V1).get_json() == {}
    assert "versions" in client.get("/_matrix/identity/versions").get_json()
    public = client.get(f"{V2}/pubkey/ed25519:0").get_json()["public_key"]
    missing = client.get(f"{V2}/pubkey/ed25519:9")

    assert client.get(
        f"{V2}/pubkey/isvalid", query_string={"public_key": public}
    ).get_json() == {"valid": True}
    assert client.get(
        f"{V2}/pubkey/isvalid", query_string={"public_key": "x"}
    ).get_json() == {"valid": False}
    assert missing.status_code == 404
    assert missing.get_json()["errcode"] == "M_NOT_FOUND"


def test_an_unhandled_error_logs_its_traceback_but_not_its_text(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    # A database error's text quotes the row it failed on, address and all.
    def fail() -> str:
        address = request.args["address"]
        try:
            raise KeyError(f"cause holding {address}")
        except KeyError as exc:
            raise RuntimeError(f"duplicate key (email, {address})") from exc

    app.add_url_rule("/fail", view_func=fail)

    response = app.test_client().get("/fail?address=carol@example.org")

    assert response.status_code == 500
    assert response.get_json()["errcode"] == "M_UNKNOWN"
    logged = [r for r in caplog.records if r.levelno >= logging.INFO]
    text = "\n".join(caplog.handler.format(r) for r in logged)
    assert "Traceback (most recent call last)" in text
    assert "RuntimeError" in text and "KeyError" in text and "in fail" in text
    assert "carol@example.org" not in text
