"""User directory search: the stores' users merged with the homeserver's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fixtures_homeserver import FakeHomeserver, Recorded
from flask import Flask
from flask.testing import FlaskClient

from conftest import ConfigFactory, FakeClock, bearer
from mxisd_flask.app import create_app
from mxisd_flask.config.sections import MemoryIdentity
from mxisd_flask.outbound import OutboundClient
from mxisd_flask.services.directory import (
    DirectoryConfig,
    DirectoryService,
    SearchRequest,
)
from mxisd_flask.services.homeserver_client import HomeserverClient
from mxisd_flask.stores.base import Capability
from mxisd_flask.stores.memory import MemoryIdentityStore

SEARCH = "/_matrix/client/v3/user_directory/search"
WHOAMI = "/_matrix/client/v3/account/whoami"
IDENTITIES = [
    {
        "username": "bob",
        "name": "Bob Builder",
        "threepids": [{"medium": "email", "address": "bob@corp.example"}],
    },
    {
        "username": "bella",
        "name": "Bella Baker",
        "threepids": [{"medium": "email", "address": "bella@corp.example"}],
    },
]
HS_BOB = {"user_id": "@bob:example.org", "display_name": "Bob (on Matrix)"}


def directory_config(homeserver: FakeHomeserver, **directory: Any) -> dict[str, Any]:
    return {
        "dns": {
            "overwrite": {
                "homeserver": {
                    "client": [{"name": "example.org", "value": homeserver.url}]
                }
            }
        },
        "memory": {"identities": IDENTITIES},
        "directory": directory,
    }


@pytest.fixture
def make_client(
    make_config: ConfigFactory, fake_homeserver: FakeHomeserver, clock: FakeClock
) -> Iterator[Any]:
    built: list[Flask] = []

    def factory(**directory: Any) -> FlaskClient:
        app = create_app(
            make_config(**directory_config(fake_homeserver, **directory)), clock=clock
        )
        built.append(app)
        return app.test_client()

    yield factory
    for app in built:
        app.extensions["mxisd"].db.close()


def search(client: FlaskClient, body: dict[str, Any], path: str = SEARCH) -> Any:
    return client.post(path, json=body, headers=bearer("client-token"))


def test_results_merge_the_homeserver_and_the_stores_without_duplicates(
    make_client: Any, fake_homeserver: FakeHomeserver
) -> None:
    fake_homeserver.answer("POST", SEARCH, 200, {"limited": False, "results": [HS_BOB]})
    client = make_client()

    response = search(client, {"search_term": "b", "limit": 10})

    assert response.status_code == 200
    assert response.get_json() == {
        "limited": False,
        "results": [
            HS_BOB,
            {"user_id": "@bella:example.org", "display_name": "Bella Baker"},
        ],
    }
    (call,) = fake_homeserver.calls(SEARCH)
    assert call.headers["authorization"] == "Bearer client-token"
    assert call.json() == {"search_term": "b", "limit": 10}


def test_the_limit_is_honoured_and_limited_says_so(
    make_client: Any, fake_homeserver: FakeHomeserver
) -> None:
    fake_homeserver.answer("POST", SEARCH, 200, {"limited": False, "results": []})
    client = make_client()

    one = search(client, {"search_term": "b", "limit": 1}).get_json()
    enough = search(client, {"search_term": "b", "limit": 2}).get_json()

    assert one["limited"] is True and len(one["results"]) == 1
    assert enough["limited"] is False
    assert {r["user_id"] for r in enough["results"]} == {
        "@bob:example.org",
        "@bella:example.org",
    }


def test_the_homeservers_limited_flag_is_kept(
    make_client: Any, fake_homeserver: FakeHomeserver
) -> None:
    fake_homeserver.answer("POST", SEARCH, 200, {"limited": True, "results": [HS_BOB]})

    answer = search(make_client(), {"search_term": "zzz"}).get_json()

    assert answer == {"limited": True, "results": [HS_BOB]}


def test_threepids_are_searched_unless_excluded(
    make_client: Any, fake_homeserver: FakeHomeserver
) -> None:
    fake_homeserver.answer("POST", SEARCH, 200, {"limited": False, "results": []})

    by_address = search(make_client(), {"search_term": "corp.example"}).get_json()
    excluded = search(
        make_client(exclude={"threepid": True}), {"search_term": "corp.example"}
    ).get_json()

    assert len(by_address["results"]) == 2
    assert excluded["results"] == []


def test_the_homeserver_can_be_left_out_but_still_checks_the_token(
    make_client: Any, fake_homeserver: FakeHomeserver
) -> None:
    def whoami(request: Recorded) -> tuple[int, Any]:
        if request.headers.get("authorization") == "Bearer client-token":
            return 200, {"user_id": "@alice:example.org"}
        return 401, {"errcode": "M_UNKNOWN_TOKEN", "error": "Unknown token"}

    fake_homeserver.on("GET", WHOAMI, whoami)
    client = make_client(exclude={"homeserver": True})

    found = search(client, {"search_term": "bella"})
    refused = client.post(
        SEARCH, json={"search_term": "bella"}, headers=bearer("stolen")
    )

    assert found.get_json() == {
        "limited": False,
        "results": [{"user_id": "@bella:example.org", "display_name": "Bella Baker"}],
    }
    assert fake_homeserver.calls(SEARCH) == []
    assert refused.status_code == 401
    assert refused.get_json()["errcode"] == "M_UNKNOWN_TOKEN"


def test_a_refusal_by_the_homeserver_reaches_the_client_unchanged(
    make_client: Any, fake_homeserver: FakeHomeserver
) -> None:
    refusal = {
        "errcode": "M_UNKNOWN_TOKEN",
        "error": "Unrecognised token",
        "soft_logout": True,
    }
    fake_homeserver.answer("POST", SEARCH, 401, refusal)

    response = search(make_client(), {"search_term": "bella"})

    assert response.status_code == 401
    assert response.get_json() == refusal


def test_the_r0_path_is_served_and_asks_the_homeserver_on_r0(
    make_client: Any, fake_homeserver: FakeHomeserver
) -> None:
    r0 = "/_matrix/client/r0/user_directory/search"
    fake_homeserver.answer("POST", r0, 200, {"limited": False, "results": []})

    response = search(make_client(), {"search_term": "bella"}, path=r0)

    assert response.status_code == 200
    assert [r["user_id"] for r in response.get_json()["results"]] == [
        "@bella:example.org"
    ]
    assert len(fake_homeserver.calls(r0)) == 1


@pytest.mark.parametrize(
    "body, headers, status, errcode",
    [
        ({}, bearer("t"), 400, "M_MISSING_PARAMS"),
        ({"search_term": 5}, bearer("t"), 400, "M_INVALID_PARAM"),
        ({"search_term": "b", "limit": "ten"}, bearer("t"), 400, "M_INVALID_PARAM"),
        ({"search_term": "b", "limit": -1}, bearer("t"), 400, "M_INVALID_PARAM"),
        ({"search_term": "b"}, {}, 401, "M_UNAUTHORIZED"),
    ],
)
def test_bad_searches_get_the_spec_error(
    body: dict[str, Any],
    headers: dict[str, str],
    status: int,
    errcode: str,
    make_client: Any,
    fake_homeserver: FakeHomeserver,
) -> None:
    response = make_client().post(SEARCH, json=body, headers=headers)

    assert response.status_code == status
    assert response.get_json()["errcode"] == errcode
    assert fake_homeserver.requests == []


def test_a_body_that_is_not_json_is_refused(make_client: Any) -> None:
    response = make_client().post(
        SEARCH, data=b"search_term=b", headers=bearer("t"), content_type="text/plain"
    )

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_NOT_JSON"


def test_without_an_internal_homeserver_url_the_search_fails_plainly(
    make_config: ConfigFactory, clock: FakeClock
) -> None:
    app = create_app(make_config(), clock=clock)

    response = search(app.test_client(), {"search_term": "b"})

    assert response.status_code == 500
    assert response.get_json() == {
        "errcode": "M_UNKNOWN",
        "error": "The homeserver's internal address is not configured",
    }
    app.extensions["mxisd"].db.close()


def test_display_names_come_from_the_profile_stores_when_the_directory_lacks_them(
    fake_homeserver: FakeHomeserver,
) -> None:
    fake_homeserver.answer("GET", WHOAMI, 200, {"user_id": "@alice:example.org"})
    nameless = MemoryIdentity("bob", "@bob:example.org", None, None, ())
    named = MemoryIdentity("bob", "@bob:example.org", None, "Bob Builder", ())
    directory_only = MemoryIdentityStore((nameless,), frozenset({Capability.DIRECTORY}))
    profile_only = MemoryIdentityStore((named,), frozenset({Capability.PROFILE}))
    homeserver = HomeserverClient(
        OutboundClient((), 5), {"example.org": fake_homeserver.url}, "example.org"
    )
    service = DirectoryService(
        [directory_only, profile_only], homeserver, DirectoryConfig(True, False)
    )

    merged = service.search(
        SearchRequest("v3", "example.org", "t", {"search_term": "bob"}, "bob", 10)
    )

    assert merged == {
        "limited": False,
        "results": [{"user_id": "@bob:example.org", "display_name": "Bob Builder"}],
    }
