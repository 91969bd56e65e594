from __future__ import annotations

import pytest
from flask import Flask

from mxisd_flask.http.request import client_address


@pytest.mark.parametrize(
    "remote, forwarded, expected",
    [
        ("203.0.113.9", "", "203.0.113.9"),
        # Not from a trusted proxy: the header is the client's own claim.
        ("203.0.113.9", "10.0.0.1", "203.0.113.9"),
        ("127.0.0.1", "198.51.100.7", "198.51.100.7"),
        # The last hop that is not one of our proxies is the client.
        ("127.0.0.1", "10.9.9.9, 198.51.100.7", "198.51.100.7"),
        ("::1", "198.51.100.7, 127.0.0.1", "198.51.100.7"),
        ("127.0.0.1", "", "127.0.0.1"),
        ("127.0.0.1", "not-an-ip", "not-an-ip"),
    ],
)
def test_forwarded_for_is_believed_only_from_trusted_proxies(
    app: Flask, remote: str, forwarded: str, expected: str
) -> None:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    with app.test_request_context(
        "/", headers=headers, environ_base={"REMOTE_ADDR": remote}
    ):
        assert client_address() == expected
