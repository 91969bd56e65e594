"""mxisd's identity backend answers over a fixed user list (stdlib only).

Shared by the REST fixture's HTTP server and by the exec store's test script
(tests/exec/identity.py), so both backends know the same people. Addresses
are kept the way a directory would hold them (mixed case, '+' and spaces),
so the tests see our side normalise what comes back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DOMAIN = "example.org"


@dataclass
class BackendUser:
    localpart: str
    password: str
    display_name: str
    threepids: list[tuple[str, str]]
    roles: list[str] = field(default_factory=list)
    # How lookups name the user: mxisd allows a localpart or a whole mxid.
    id_type: str = "localpart"

    def user_id(self) -> dict[str, str]:
        if self.id_type == "mxid":
            return {"type": "mxid", "value": f"@{self.localpart}:{DOMAIN}"}
        return {"type": "localpart", "value": self.localpart}


USERS = [
    BackendUser(
        "dave",
        "dave-pw",
        "Dave Bowman",
        [("email", "Dave.Bowman@Example.ORG"), ("msisdn", "+44 7700 900001")],
        ["staff", "pilots"],
    ),
    BackendUser(
        "Erin",
        "erin-pw",
        "Erin Example",
        [("email", "erin@example.org"), ("employee", "E-1002")],
        id_type="mxid",
    ),
]
BY_LOCALPART = {u.localpart.lower(): u for u in USERS}


def backend_key(medium: str, address: str) -> tuple[str, str]:
    """How the backend itself matches addresses (case-blind, digits only)."""
    if medium == "email":
        return medium, address.lower()
    if medium == "msisdn":
        return medium, re.sub(r"\D", "", address)
    return medium, address


def find(medium: str, address: str) -> tuple[BackendUser, str] | None:
    """The user holding the 3PID, and the backend's own spelling of it."""
    wanted = backend_key(medium, address)
    for user in USERS:
        for held_medium, held in user.threepids:
            if backend_key(held_medium, held) == wanted:
                return user, held
    return None


def user_of(request: dict[str, Any]) -> BackendUser | None:
    user = BY_LOCALPART.get(str(request.get("localpart", "")).lower())
    return user if user and request.get("domain") == DOMAIN else None


def single(lookup: dict[str, Any]) -> Any:
    hit = find(lookup["medium"], lookup["address"])
    if hit is None:
        return {}
    return {"lookup": {**lookup, "id": hit[0].user_id()}}


def bulk(body: dict[str, Any]) -> Any:
    found = []
    for item in body["lookup"]:
        hit = find(item["medium"], item["address"])
        if hit is not None:
            user, held = hit
            found.append(
                {"medium": item["medium"], "address": held, "id": user.user_id()}
            )
    return {"lookup": found}


def listing(request: dict[str, Any]) -> Any:
    """Our listing endpoint's answer: one user a page, so paging is used."""
    start = int(request.get("from") or 0)
    page = [
        {"medium": medium, "address": held, "id": user.user_id()}
        for user in USERS[start : start + 1]
        for medium, held in user.threepids
    ]
    more = start + 1 < len(USERS)
    return {"lookup": page, "next": str(start + 1) if more else None}


def auth(request: dict[str, Any]) -> Any:
    user = user_of(request)
    if user is None or request.get("password") != user.password:
        return {"auth": {"success": False}}
    threepids = [{"medium": m, "address": a} for m, a in user.threepids]
    return {
        "auth": {
            "success": True,
            "id": user.user_id(),
            "profile": {"display_name": user.display_name, "three_pids": threepids},
        }
    }


def directory(body: dict[str, Any]) -> Any:
    term = str(body["search_term"]).lower()
    results = []
    for user in USERS:
        if body["by"] == "threepid":
            hit = any(term in a.lower() for _, a in user.threepids)
        else:
            hit = term in user.display_name.lower()
        if hit:
            results.append(
                {
                    "user_id": user.localpart,
                    "display_name": user.display_name,
                    "avatar_url": f"mxc://{DOMAIN}/{user.localpart}",
                }
            )
    return {"limited": False, "results": results}


def profile(fieldname: str) -> Callable[[dict[str, Any]], Any]:
    """The answer of one profile question: display_name, threepids or roles."""

    def answer(request: dict[str, Any]) -> Any:
        user = user_of(request)
        if user is None:
            return {"profile": {}}
        values: dict[str, Any] = {
            "display_name": user.display_name,
            "threepids": [{"medium": m, "address": a} for m, a in user.threepids],
            "roles": user.roles,
        }
        return {"profile": {fieldname: values[fieldname]}}

    return answer
