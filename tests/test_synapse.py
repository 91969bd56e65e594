"""Against a real Synapse (fixtures_synapse.py): email invites stored with us
and delivered by onbind, LDAP users logging in through our password module,
directory search and 3PID login through our interception."""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.parse
from typing import Any

from fixtures_synapse import DAVE, SERVER_NAME, MatrixUser, SynapseStack

from conftest import Mailbox, bearer, text_of

V3 = "/_matrix/client/v3"
CAROL_EMAIL = "carol@example.org"


def wait_for_mail(mailbox: Mailbox, recipient: str, timeout_s: float = 15) -> str:
    deadline = time.monotonic() + timeout_s
    with mailbox.received:
        while True:
            for _sender, recipients, message in mailbox.messages:
                if recipient in recipients:
                    return text_of(message)
            left = deadline - time.monotonic()
            assert left > 0, f"no mail to {recipient}"
            mailbox.received.wait(left)


def quoted(user_id: str) -> str:
    return urllib.parse.quote(user_id, safe="")


def identity_token(stack: SynapseStack, user: MatrixUser) -> str:
    """Our access token for a Synapse user, bought with an OpenID token."""
    path = f"{V3}/user/{quoted(user.user_id)}/openid/request_token"
    openid = user.ok("POST", path, {})
    assert openid["matrix_server_name"] == SERVER_NAME
    registered = stack.identity(
        "POST", "/_matrix/identity/v2/account/register", json=openid
    )
    assert registered.status_code == 200, registered.text
    token = str(registered.json()["token"])
    account = stack.identity(
        "GET", "/_matrix/identity/v2/account", headers=bearer(token)
    )
    assert account.json() == {"user_id": user.user_id}
    return token


def wait_for_membership(
    user: MatrixUser, room_id: str, member: str, wanted: str
) -> dict[str, Any]:
    path = f"{V3}/rooms/{quoted(room_id)}/state/m.room.member/{quoted(member)}"
    deadline = time.monotonic() + 20
    while True:
        response = user.call("GET", path)
        if response.status_code == 200 and response.json()["membership"] == wanted:
            return dict(response.json())
        assert time.monotonic() < deadline, (wanted, response.text)
        time.sleep(0.2)


def test_email_invite_reaches_the_invitee_who_binds_and_joins(
    synapse_stack: SynapseStack, mailbox: Mailbox
) -> None:
    stack = synapse_stack
    alice = stack.register("alice", "alice-synapse-pw")
    alice_token = identity_token(stack, alice)

    # (a) alice invites carol's email through Synapse, which asks us.
    room_id = alice.ok("POST", f"{V3}/createRoom", {"name": "Plans"})["room_id"]
    invited = alice.call(
        "POST",
        f"{V3}/rooms/{quoted(room_id)}/invite",
        {
            "id_server": stack.mxisd_server,
            "id_access_token": alice_token,
            "medium": "email",
            "address": CAROL_EMAIL,
        },
    )
    assert invited.status_code == 200, invited.text
    # We received store-invite from Synapse...
    assert f"invite stored room_id={room_id} sender={alice.user_id}" in (
        stack.mxisd.output()
    )
    # ...the real SMTP server got carol's invite mail, with its token...
    mail = wait_for_mail(mailbox, CAROL_EMAIL)
    assert '"Plans"' in mail
    assert f"alice invited {CAROL_EMAIL}" in mail
    code = re.search(r"Invitation code: (\S+)", mail)
    assert code, mail
    # ...and the room holds the third-party invite carrying that token.
    state = alice.ok("GET", f"{V3}/rooms/{quoted(room_id)}/state")
    invites = [e for e in state if e["type"] == "m.room.third_party_invite"]
    assert len(invites) == 1
    event = invites[0]
    assert event["sender"] == alice.user_id
    assert event["state_key"] == code.group(1)
    pubkey = stack.identity("GET", "/_matrix/identity/v2/pubkey/ed25519:0").json()
    assert event["content"]["public_key"] == pubkey["public_key"]
    assert event["content"]["key_validity_url"] == (
        f"{stack.mxisd_url}/_matrix/identity/v2/pubkey/isvalid"
    )
    assert "car" in event["content"]["display_name"]
    assert CAROL_EMAIL not in event["content"]["display_name"]

    # (b) carol joins Synapse, proves her email to us and binds it through
    # Synapse: we call onbind, and her membership becomes invite.
    carol = stack.register("carol", "carol-synapse-pw")
    carol_token = identity_token(stack, carol)
    mailbox.messages.clear()
    requested = stack.identity(
        "POST",
        "/_matrix/identity/v2/validate/email/requestToken",
        headers=bearer(carol_token),
        json={"client_secret": "carol-secret", "email": CAROL_EMAIL, "send_attempt": 1},
    )
    assert requested.status_code == 200, requested.text
    sid = requested.json()["sid"]
    wait_for_mail(mailbox, CAROL_EMAIL)
    submitted = stack.identity(
        "POST",
        "/_matrix/identity/v2/validate/email/submitToken",
        headers=bearer(carol_token),
        json={"sid": sid, "client_secret": "carol-secret", "token": mailbox.token()},
    )
    assert submitted.json() == {"success": True}
    carol.ok(
        "POST",
        f"{V3}/account/3pid/bind",
        {
            "id_server": stack.mxisd_server,
            "id_access_token": carol_token,
            "sid": sid,
            "client_secret": "carol-secret",
        },
    )
    member = wait_for_membership(alice, room_id, carol.user_id, "invite")
    assert member["third_party_invite"]["signed"]["token"] == code.group(1)
    assert member["third_party_invite"]["signed"]["mxid"] == carol.user_id
    delivered = f"onbind delivered server_name={SERVER_NAME} mxid={carol.user_id}"
    assert delivered in stack.mxisd.output()

    carol.ok("POST", f"{V3}/rooms/{quoted(room_id)}/join", {})
    wait_for_membership(alice, room_id, carol.user_id, "join")


def test_store_user_logs_in_to_synapse_through_our_module(
    synapse_stack: SynapseStack,
) -> None:
    stack = synapse_stack
    admin = stack.register("admin", "admin-pw", admin=True)
    dave_id = f"@{DAVE.localpart}:{SERVER_NAME}"
    before = admin.call("GET", f"/_synapse/admin/v2/users/{quoted(dave_id)}")
    assert before.status_code == 404  # dave is only in the LDAP directory

    wrong = stack.login(DAVE.localpart, "not-daves-password")
    assert wrong.status_code == 403, wrong.text
    assert wrong.json()["errcode"] == "M_FORBIDDEN"
    still_absent = admin.call("GET", f"/_synapse/admin/v2/users/{quoted(dave_id)}")
    assert still_absent.status_code == 404

    login = stack.login(DAVE.localpart, DAVE.password)
    assert login.status_code == 200, login.text
    assert login.json()["user_id"] == dave_id
    dave = stack.synapse_user(login.json())

    # Synapse created dave with the directory's display name and email (his
    # phone number is not applied: the module API adds emails only).
    profile = dave.ok("GET", f"{V3}/profile/{quoted(dave_id)}")
    assert profile["displayname"] == DAVE.display_name
    threepids = dave.ok("GET", f"{V3}/account/3pid")["threepids"]
    assert [(t["medium"], t["address"]) for t in threepids] == [("email", DAVE.email)]
    created = admin.ok("GET", f"/_synapse/admin/v2/users/{quoted(dave_id)}")
    assert created["name"] == dave_id

    # A second login, typed in another case, is the same account.
    again = stack.login(f"@{DAVE.localpart.title()}:{SERVER_NAME}", DAVE.password)
    assert again.status_code == 200, again.text
    assert again.json()["user_id"] == dave_id
    assert stack.login(DAVE.localpart, "still-wrong").status_code == 403

    # Our server logged each check, never the password.
    output = stack.mxisd.output()
    assert f"credentials accepted mxid={dave_id}" in output
    assert f"credentials refused mxid={dave_id}" in output
    assert DAVE.password not in output
    assert DAVE.password not in stack.synapse.output()


def test_synapse_users_unknown_to_the_stores_keep_their_own_password(
    synapse_stack: SynapseStack,
) -> None:
    stack = synapse_stack
    stack.register("erin", "erin-synapse-pw")

    own = stack.login("erin", "erin-synapse-pw")
    nobody = stack.login("nobody", "whatever")

    assert own.status_code == 200, own.text
    assert own.json()["user_id"] == f"@erin:{SERVER_NAME}"
    assert nobody.status_code == 403
    assert "credentials refused mxid=@nobody:example.test" in stack.mxisd.output()


def test_bad_module_config_is_refused_by_name(synapse_stack: SynapseStack) -> None:
    script = (
        "import sys\n"
        "from mxisd_synapse import MxisdPasswordProvider as P\n"
        "from synapse.module_api.errors import ConfigError\n"
        "for bad in ({}, {'endpoint': 'ftp://x'}, "
        "{'endpoint': 'https://x', 'create_users': 'yes'}):\n"
        "    try:\n"
        "        P.parse_config(bad)\n"
        "    except ConfigError as exc:\n"
        "        print(exc)\n"
        "print(P.parse_config({'endpoint': 'https://id.example.org/'}))\n"
    )

    done = subprocess.run(
        [str(synapse_stack.synapse_python), "-c", script],
        env={**os.environ, "PYTHONPATH": str(synapse_stack.module_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("endpoint:")
    assert lines[1].startswith("endpoint:")
    assert lines[2].startswith("create_users:")
    assert lines[3] == (
        "ProviderConfig(endpoint='https://id.example.org', create_users=True, "
        "update_display_name=False, threepids=True)"
    )


def test_identity_server_down_refuses_store_users_cleanly(
    synapse_stack: SynapseStack,
) -> None:
    stack = synapse_stack
    stack.register("frank", "frank-synapse-pw")
    stack.mxisd.stop()
    try:
        store_user = stack.login(DAVE.localpart, DAVE.password)
        own = stack.login("frank", "frank-synapse-pw")
    finally:
        stack.mxisd.start_again()
        stack.mxisd.wait_until(
            f"{stack.mxisd_url}/_matrix/identity/v2", verify=stack.ca_file
        )

    # No answer from us is no login, not a 500; Synapse's own users go on.
    assert store_user.status_code == 403, store_user.text
    assert own.status_code == 200, own.text
    assert "identity server unreachable" in stack.synapse.output()
    back = stack.login(DAVE.localpart, DAVE.password)
    assert back.status_code == 200, back.text


def test_directory_search_merges_directory_users_with_synapse_results(
    synapse_stack: SynapseStack,
) -> None:
    stack = synapse_stack
    searcher = stack.register("grace", "grace-synapse-pw")
    bobby = stack.register("bobby", "bobby-synapse-pw")
    # Synapse fills its user directory in the background: wait for bobby.
    deadline = time.monotonic() + 20
    while bobby.user_id not in synapse_results(searcher, "bob"):
        assert time.monotonic() < deadline, "bobby never reached the directory"
        time.sleep(0.2)

    # (d) The same search through us: Synapse's user and the LDAP user who
    # has no Synapse account yet (ldapbob, "Bob Stars" in tests/ldap).
    answer = stack.identity(
        "POST",
        f"{V3}/user_directory/search",
        headers=bearer(searcher.access_token),
        json={"search_term": "bob", "limit": 10},
    )

    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["user_id"] for r in results] == [
        bobby.user_id,
        f"@ldapbob:{SERVER_NAME}",
    ]
    assert results[1]["display_name"] == "Bob Stars"
    assert answer.json()["limited"] is False
    absent = searcher.call("GET", f"{V3}/profile/{quoted(results[1]['user_id'])}")
    assert absent.status_code == 404  # only in the directory
    refused = stack.identity(
        "POST",
        f"{V3}/user_directory/search",
        headers=bearer("not-a-synapse-token"),
        json={"search_term": "bob"},
    )
    assert refused.status_code == 401
    assert refused.json()["errcode"] == "M_UNKNOWN_TOKEN"


def synapse_results(user: MatrixUser, term: str) -> list[str]:
    found = user.ok("POST", f"{V3}/user_directory/search", {"search_term": term})
    return [r["user_id"] for r in found["results"]]


def test_login_by_email_through_us_reaches_synapse_and_our_module(
    synapse_stack: SynapseStack,
) -> None:
    stack = synapse_stack
    by_email = {
        "type": "m.login.password",
        "identifier": {
            "type": "m.id.thirdparty",
            "medium": "email",
            "address": DAVE.email.upper(),
        },
    }

    # (e) Our login interception finds dave's mxid in LDAP by his email and
    # forwards a user login; Synapse checks the password with our module.
    login = stack.identity(
        "POST", f"{V3}/login", json={**by_email, "password": DAVE.password}
    )
    wrong = stack.identity(
        "POST", f"{V3}/login", json={**by_email, "password": "not-daves"}
    )

    assert login.status_code == 200, login.text
    assert login.json()["user_id"] == f"@{DAVE.localpart}:{SERVER_NAME}"
    whoami = stack.synapse_user(login.json()).ok("GET", f"{V3}/account/whoami")
    assert whoami["user_id"] == login.json()["user_id"]
    assert wrong.status_code == 403, wrong.text
    assert wrong.json()["errcode"] == "M_FORBIDDEN"
