"""Exec store test script: answers mxisd's exec contract from the shared users.

Usage: identity.py ACTION FORMAT, ACTION one of auth, single, bulk,
listing, directory, displayName, threepids, roles; FORMAT json or plain (the input
and, for auth and single, the output format). With EXEC_RECORD set, it
appends what it was given (argv, environment, stdin) to that file as one
JSON line, so tests can check that values arrived as plain data.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mxisd_backend  # noqa: E402  # the shared user list, found via tests/


def record(stdin: str) -> None:
    target = os.environ.get("EXEC_RECORD")
    if target:
        entry = {"argv": sys.argv[1:], "env": dict(os.environ), "stdin": stdin}
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


def plain_request(action: str, stdin: str) -> dict[str, Any]:
    """The fields of mxisd's default plain templates, one per line."""
    lines = stdin.split("\n")
    if action == "auth":
        return dict(
            zip(("localpart", "domain", "mxid", "password"), lines, strict=False)
        )
    if action == "single":
        return {"medium": lines[0], "address": lines[1]}
    if action == "bulk":
        pairs = [line.split("\t") for line in lines if line]
        return {"lookup": [{"medium": m, "address": a} for m, a in pairs]}
    if action == "directory":
        return {"by": lines[0], "search_term": lines[1]}
    if action == "listing":
        return {"listing": {"from": lines[0] or None}}
    return dict(zip(("localpart", "domain", "mxid"), lines, strict=False))


ANSWERS = {
    "auth": mxisd_backend.auth,
    "single": mxisd_backend.single,
    "bulk": mxisd_backend.bulk,
    "listing": lambda request: mxisd_backend.listing(request["listing"]),
    "directory": mxisd_backend.directory,
    "displayName": mxisd_backend.profile("display_name"),
    "threepids": mxisd_backend.profile("threepids"),
    "roles": mxisd_backend.profile("roles"),
}


def plain_answer(action: str, answer: Any) -> int:
    """mxisd's plain output: exit status 1 for "no", else the lines."""
    if action == "auth":
        if not answer["auth"]["success"]:
            return 1
        print("true")
        print(answer["auth"]["profile"]["display_name"])
        return 0
    if not answer:
        return 1
    user_id = answer["lookup"]["id"]
    if user_id["type"] == "localpart":
        print(user_id["value"])  # one line: a localpart
    else:
        print(user_id["type"])
        print(user_id["value"])
    return 0


def main() -> int:
    action, fmt = sys.argv[1], sys.argv[2]
    stdin = sys.stdin.read()
    record(stdin)
    request = json.loads(stdin) if fmt == "json" else plain_request(action, stdin)
    answer = ANSWERS[action](request)
    if fmt == "plain" and action in ("auth", "single"):
        return plain_answer(action, answer)
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
