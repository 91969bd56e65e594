"""The exec store running real scripts (tests/exec/) in mxisd's exec contract."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_homeserver import FakeHomeserver
from fixtures_rest_exec import (
    BULK_ANSWER,
    BULK_QUESTION,
    DAVE,
    DAVE_IN_DIRECTORY,
    DAVE_THREEPIDS,
    ERIN,
    IDENTITY_SCRIPT,
    LISTED,
    ExecRecord,
    bulk,
    check_credentials,
    dave_accepted,
    directory_search,
    directory_sections,
    exec_action,
    exec_section,
    misbehaving,
    store_config,
    v1_lookup,
    v2_hashed_lookup,
    v2_none_lookup,
)
from flask import Flask
from flask.testing import FlaskClient

from conftest import ConfigFactory, FakeClock, Homeserver, deep_merge, homeserver_config
from mxisd_flask.app import create_app
from mxisd_flask.errors import ConfigError, StoreError
from mxisd_flask.stores import exec_store
from mxisd_flask.stores.base import AuthResult, Capability, DirectoryEntry, Profile

HOSTILE = "x'\"; touch PWNED; $(touch PWNED2) `touch PWNED3` | cat\n> PWNED4"


@pytest.fixture
def backend() -> str:
    return "sqlite"  # the storage backend plays no part here


def exec_store_for(section: dict[str, Any]) -> exec_store.ExecIdentityStore:
    store = exec_store.from_config(store_config(exec=section))
    assert store is not None
    return store


def only(**actions: Any) -> dict[str, Any]:
    """An exec section with just the given actions (dotted path -> action)."""
    section: dict[str, Any] = {"enabled": True, "timeout": 5}
    for path, action in actions.items():
        node = section
        *parents, leaf = path.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = action
    return section


@pytest.fixture
def exec_client(
    make_config: ConfigFactory, clock: FakeClock, homeserver: Homeserver
) -> Iterator[Any]:
    """A factory: the app's test client with the given exec section."""
    apps: list[Flask] = []

    def factory(section: dict[str, Any], **sections: Any) -> FlaskClient:
        config = make_config(
            exec=section, **deep_merge(homeserver_config(homeserver), sections)
        )
        apps.append(create_app(config, clock=clock))
        return apps[-1].test_client()

    yield factory
    for application in apps:
        application.extensions["mxisd"].db.close()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "store=exec" in r.getMessage()
    ]


@pytest.mark.parametrize("fmt", ["json", "plain"])
def test_v1_lookup_runs_the_single_script(
    exec_client: Any, exec_record: ExecRecord, fmt: str
) -> None:
    single = exec_action("single", fmt, env=exec_record.env())
    client = exec_client(only(identity__lookup__single=single))

    body = v1_lookup(client, "email", "DAVE.Bowman@example.org")

    assert body["mxid"] == DAVE
    assert body["signatures"]["example.org"]["ed25519:0"]
    (run,) = exec_record.runs()
    expected_stdin = {
        "json": '{"medium": "email", "address": "dave.bowman@example.org"}',
        "plain": "email\ndave.bowman@example.org",
    }
    assert run["stdin"] == expected_stdin[fmt]


@pytest.mark.parametrize("fmt", ["json", "plain"])
def test_v1_lookup_of_an_mxid_answer_and_of_nobody(exec_client: Any, fmt: str) -> None:
    client = exec_client(only(identity__lookup__single=exec_action("single", fmt)))

    assert v1_lookup(client, "employee", "E-1002")["mxid"] == "@erin:example.org"
    assert v1_lookup(client, "email", "nobody@example.org") == {}


@pytest.mark.parametrize("fmt", ["json", "plain"])
def test_bulk_lookup_runs_the_bulk_script_once(
    exec_client: Any, exec_record: ExecRecord, fmt: str
) -> None:
    action = exec_action("bulk", fmt, env=exec_record.env())
    client = exec_client(only(identity__lookup__bulk=action))

    assert bulk(client, *BULK_QUESTION) == BULK_ANSWER
    (run,) = exec_record.runs()
    assert "alice@example.org" not in run["stdin"]  # memory answered it


def test_bulk_lookup_without_a_bulk_script_runs_single_per_threepid(
    exec_record: ExecRecord,
) -> None:
    single = exec_action("single", env=exec_record.env())
    store = exec_store_for(only(identity__lookup__single=single))

    assert store.bulk_lookup(list(DAVE_THREEPIDS)) == {
        tp: DAVE for tp in DAVE_THREEPIDS
    }
    assert len(exec_record.runs()) == 2


def test_single_lookup_without_a_single_script_uses_bulk() -> None:
    store = exec_store_for(only(identity__lookup__bulk=exec_action("bulk")))

    assert store.lookup("msisdn", "447700900001") == DAVE


def test_v2_none_lookup_answers_from_the_exec_store(
    exec_client: Any, homeserver: Homeserver
) -> None:
    client = exec_client(exec_section())
    addresses = ["dave.bowman@example.org email", "E-1002 employee"]

    assert v2_none_lookup(client, homeserver, addresses) == {
        "dave.bowman@example.org email": DAVE,
        "E-1002 employee": "@erin:example.org",
    }


@pytest.mark.parametrize(
    "fmt, stdins",
    [
        ("json", ['{"listing": {"from": null}}', '{"listing": {"from": "1"}}']),
        ("plain", ["\n", "1\n"]),
    ],
)
def test_listing_runs_the_script_once_per_page(
    exec_record: ExecRecord, fmt: str, stdins: list[str]
) -> None:
    action = exec_action("listing", fmt, env=exec_record.env())
    store = exec_store_for(only(identity__listing=action))

    assert set(store.iter_threepids()) == LISTED
    assert [run["stdin"] for run in exec_record.runs()] == stdins


def test_v2_hashed_lookup_finds_exec_users_through_the_listing_script(
    exec_client: Any, homeserver: Homeserver
) -> None:
    client = exec_client(only(identity__listing=exec_action("listing")))
    asked = [("email", "dave.bowman@example.org"), ("employee", "E-1002")]

    assert v2_hashed_lookup(client, homeserver, asked) == {
        asked[0]: DAVE,
        asked[1]: ERIN,
    }


@pytest.mark.parametrize("how", ["status", "garbage", "timeout"])
def test_a_failing_listing_script_is_a_store_error(tmp_path: Path, how: str) -> None:
    store = exec_store_for(only(identity__listing=FAILURES[how](tmp_path)))

    with pytest.raises(StoreError):
        list(store.iter_threepids())


def test_listing_has_its_own_switch() -> None:
    section = only(
        identity__listing=exec_action("listing"),
        identity__lookup__single=exec_action("single"),
    )
    section["listing"] = {"enabled": False}

    assert exec_store_for(section).capabilities == {Capability.LOOKUP}


FAILURES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "status": lambda tmp: misbehaving("status"),
    "timeout": lambda tmp: {**misbehaving("slow", str(tmp / "pid")), "timeout": 0.5},
    "garbage": lambda tmp: {**misbehaving("garbage"), "output": {"type": "json"}},
    "binary": lambda tmp: misbehaving("binary"),
    "missing": lambda tmp: {"command": sys.executable, "args": ["/nonexistent.py"]},
}


@pytest.mark.parametrize("how", sorted(FAILURES))
def test_a_failing_script_leaves_the_memory_store_answering(
    exec_client: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path, how: str
) -> None:
    action = FAILURES[how](tmp_path)
    client = exec_client(
        only(identity__lookup__single=action, identity__lookup__bulk=action)
    )

    single = v1_lookup(client, "email", "dave.bowman@example.org")
    found = bulk(
        client, ("email", "alice@example.org"), ("email", "dave.bowman@example.org")
    )

    assert single == {}
    assert found == {("email", "alice@example.org", "@alice:example.org")}
    assert len(warnings_of(caplog)) == 2, warnings_of(caplog)


def test_a_timed_out_script_is_killed_with_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    action = {**misbehaving("slow", str(pidfile)), "timeout": 0.5}
    store = exec_store_for(only(identity__lookup__single=action))

    started = time.monotonic()
    with pytest.raises(StoreError, match="no answer within 0.5 s"):
        store.lookup("email", "dave.bowman@example.org")

    assert time.monotonic() - started < 3
    # SIGKILL reaches the grandchild asynchronously: give it a moment.
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _running(child)


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("fmt", ["json", "plain"])
def test_auth_success_and_failure(exec_record: ExecRecord, fmt: str) -> None:
    store = exec_store_for(only(auth=exec_action("auth", fmt, env=exec_record.env())))

    assert store.authenticate(DAVE, "dave", "dave-pw") == AuthResult(
        DAVE,
        Profile("Dave Bowman", DAVE_THREEPIDS if fmt == "json" else ()),
    )
    assert store.authenticate(DAVE, "dave", "wrong") is None
    assert store.authenticate("@nobody:example.org", "nobody", "x") is None
    # The password reached the script on stdin, never in its arguments.
    first = exec_record.runs()[0]
    assert "dave-pw" in first["stdin"]
    assert not any("dave-pw" in arg for arg in first["argv"])


def test_auth_lower_cases_the_mxid_the_script_answers() -> None:
    store = exec_store_for(only(auth=exec_action("auth")))

    result = store.authenticate("@erin:example.org", "erin", "erin-pw")

    assert result is not None and result.mxid == "@erin:example.org"


def test_auth_by_exit_status_alone() -> None:
    action = {**exec_action("auth", "plain"), "output": {}}
    store = exec_store_for(only(auth=action))

    assert store.authenticate(DAVE, "dave", "dave-pw") == AuthResult(DAVE)
    assert store.authenticate(DAVE, "dave", "wrong") is None


def test_auth_with_a_json_template_keeps_quotes_in_the_password_as_data(
    exec_record: ExecRecord,
) -> None:
    template = (
        '{"localpart": "{localpart}", "domain": "{domain}", "password": "{password}"}'
    )
    action = exec_action(
        "auth", env=exec_record.env(), input={"type": "json", "template": template}
    )
    store = exec_store_for(only(auth=action))

    assert store.authenticate(DAVE, "dave", 'pw", "localpart": "erin') is None
    sent = json.loads(exec_record.runs()[0]["stdin"])
    assert sent == {
        "localpart": "dave",
        "domain": "example.org",
        "password": 'pw", "localpart": "erin',
    }


def test_the_password_is_never_logged(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG, logger="mxisd_flask")
    store = exec_store_for(only(auth=exec_action("auth")))
    store.authenticate(DAVE, "dave", "dave-pw")
    broken = exec_store_for(
        only(auth={**misbehaving("status"), "input": {"type": "plain"}})
    )
    with pytest.raises(StoreError):
        broken.authenticate(DAVE, "dave", "dave-pw")

    assert caplog.records, "the runs should have been logged at debug"
    assert not any("dave-pw" in r.getMessage() for r in caplog.records)


def test_tokens_can_be_renamed_globally_and_per_action(
    exec_record: ExecRecord,
) -> None:
    action = exec_action(
        "auth",
        "plain",
        env={**exec_record.env(), "WHO": "{matrixId}", "PW_LEN": "{user}"},
        token={"localpart": "{user}"},
    )
    action["args"] = [*action["args"], "{matrixId}"]
    section = only(auth=action)
    section["token"] = {"mxid": "{matrixId}"}
    store = exec_store_for(section)

    assert store.authenticate(DAVE, "dave", "dave-pw") is not None
    run = exec_record.runs()[0]
    assert run["argv"][-1] == DAVE
    assert run["env"]["WHO"] == DAVE
    assert run["env"]["PW_LEN"] == "dave"
    assert run["stdin"] == f"dave\nexample.org\n{DAVE}\ndave-pw\n"


def test_hostile_values_reach_the_script_as_data(
    exec_client: Any,
    exec_record: ExecRecord,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    single = exec_action(
        "single",
        env={**exec_record.env(), "ADDRESS": "{address}"},
    )
    single["args"] = [*single["args"], "{address}", "--medium={medium}"]
    client = exec_client(only(identity__lookup__single=single))

    assert v1_lookup(client, "employee", HOSTILE) == {}

    (run,) = exec_record.runs()
    assert run["argv"][-2:] == [HOSTILE, "--medium=employee"]
    assert run["env"]["ADDRESS"] == HOSTILE
    assert json.loads(run["stdin"]) == {"medium": "employee", "address": HOSTILE}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("PWNED")]


def test_a_token_inside_a_value_is_not_expanded_again(exec_record: ExecRecord) -> None:
    single = exec_action("single", "plain", env=exec_record.env())
    single["args"] = [*single["args"], "{address}|{medium}"]
    store = exec_store_for(only(identity__lookup__single=single))

    assert store.lookup("employee", "{medium}") is None

    assert exec_record.runs()[0]["argv"][-1] == "{medium}|employee"


def test_plain_input_cannot_carry_a_line_break_so_the_script_is_not_run(
    exec_record: ExecRecord,
) -> None:
    single = exec_action("single", "plain", env=exec_record.env())
    bulk_action = exec_action("bulk", "plain", env=exec_record.env())
    store = exec_store_for(
        only(identity__lookup__single=single, identity__lookup__bulk=bulk_action)
    )

    assert store.lookup("employee", "E-1002\nmxid") is None
    assert store.bulk_lookup([("employee", "E-1002\tx"), ("employee", "E-1002")]) == {
        ("employee", "E-1002"): "@erin:example.org"
    }
    (run,) = exec_record.runs()
    assert run["stdin"] == "employee\tE-1002\n"


def test_the_script_does_not_inherit_our_environment(
    exec_record: ExecRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MXISD_TEST_SECRET", "do-not-pass")
    store = exec_store_for(only(auth=exec_action("auth", env=exec_record.env())))

    store.authenticate(DAVE, "dave", "dave-pw")

    env = exec_record.runs()[0]["env"]
    assert "MXISD_TEST_SECRET" not in env
    assert env["PATH"] == os.environ["PATH"]


def test_exit_statuses_decide_between_answer_refusal_and_failure() -> None:
    action = {**misbehaving("status"), "output": {"type": "json"}}

    def lookup(exit_codes: dict[str, list[int]]) -> str | None:
        section = only(identity__lookup__single={**action, "exit": exit_codes})
        return exec_store_for(section).lookup("email", "dave.bowman@example.org")

    with pytest.raises(StoreError, match="unexpected exit status 3"):
        lookup({})
    assert lookup({"failure": [1, 3]}) is None
    assert lookup({"success": [0, 3]}) == DAVE


def test_directory_search_by_name_and_by_threepid() -> None:
    section = only(
        directory__search__byName=exec_action("directory"),
        directory__search__byThreepid=exec_action("directory", "plain"),
    )
    store = exec_store_for(section)

    assert store.directory_search("bowman", by_threepid=False) == [
        DirectoryEntry(DAVE, "Dave Bowman", "mxc://example.org/dave")
    ]
    assert store.directory_search("e-1002", by_threepid=True) == [
        DirectoryEntry("@erin:example.org", "Erin Example", "mxc://example.org/Erin")
    ]


def test_a_threepid_search_uses_by_name_when_by_threepid_is_not_set(
    exec_record: ExecRecord,
) -> None:
    action = exec_action("directory", env=exec_record.env())
    store = exec_store_for(only(directory__search__byName=action))

    assert [e.mxid for e in store.directory_search("dave.bowman@", True)] == [DAVE]
    assert json.loads(exec_record.runs()[0]["stdin"]) == {
        "by": "threepid",
        "search_term": "dave.bowman@",
    }


@pytest.mark.parametrize("fmt", ["json", "plain"])
def test_profile_merges_the_three_scripts(fmt: str) -> None:
    store = exec_store_for(exec_section(fmt))

    assert store.profile(DAVE) == Profile(
        "Dave Bowman", DAVE_THREEPIDS, ("staff", "pilots")
    )
    assert store.profile("@nobody:example.org") is None


def test_actions_without_a_command_are_not_offered() -> None:
    store = exec_store_for(only(profile__role=exec_action("roles")))

    assert store.capabilities == {Capability.PROFILE}
    assert store.lookup("email", "dave.bowman@example.org") is None
    assert store.bulk_lookup(list(DAVE_THREEPIDS)) == {}
    assert store.profile(DAVE) == Profile(roles=("staff", "pilots"))


def test_feature_switches_follow_mxisd() -> None:
    section = exec_section()
    section["identity"]["enabled"] = False
    assert Capability.LOOKUP not in exec_store_for(section).capabilities

    section = exec_section(enabled=False)
    section["auth"]["enabled"] = True
    assert exec_store_for(section).capabilities == {Capability.AUTH}

    assert (
        exec_store.from_config(store_config(exec=exec_section(enabled=False))) is None
    )


@pytest.mark.parametrize(
    "change, key",
    [
        ({"input": {"type": "xml"}}, "exec.identity.lookup.bulk.input.type"),
        ({"output": {"type": "plain"}}, "exec.identity.lookup.bulk.output.type"),
        ({"output": {"template": "{x}"}}, "exec.identity.lookup.bulk.output.template"),
        ({"input": {"type": "json", "template": "{}"}}, "bulk.input.template"),
        ({"command": "/nonexistent/script"}, "exec.identity.lookup.bulk.command"),
        ({"command": "no-such-command-here"}, "exec.identity.lookup.bulk.command"),
        ({"command": IDENTITY_SCRIPT + ".missing"}, "bulk.command"),
        ({"exit": {"success": ["zero"]}}, "exec.identity.lookup.bulk.exit.success"),
        ({"timeout": -1}, "exec.identity.lookup.bulk.timeout"),
    ],
)
def test_bad_exec_configuration_names_the_key(change: dict[str, Any], key: str) -> None:
    section = only(identity__lookup__bulk={**exec_action("bulk"), **change})

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        exec_store.from_config(store_config(exec=section))


def test_a_relative_command_is_relative_to_the_config_file(tmp_path: Path) -> None:
    script = tmp_path / "scripts" / "lookup.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\necho dave\n")
    script.chmod(0o755)
    section = only(
        identity__lookup__single={
            "command": "scripts/lookup.sh",
            "output": {"type": "plain"},
        }
    )
    config_file = tmp_path / "mxisd.yaml"
    config_file.write_text(
        json.dumps(
            {
                "matrix": {"domain": "example.org"},
                "key": {"path": "signing.key"},
                "storage": {"provider": {"sqlite": {"database": "mxisd.db"}}},
                "exec": section,
            }
        )
    )
    from mxisd_flask.config import load_config

    store = exec_store.from_config(load_config(str(config_file)))

    assert store is not None
    assert store.lookup("email", "dave.bowman@example.org") == DAVE


def test_synapse_password_check_runs_the_auth_script(exec_client: Any) -> None:
    client = exec_client(only(auth=exec_action("auth")))

    assert check_credentials(client, "@Dave:example.org", "dave-pw") == dave_accepted()
    assert check_credentials(client, "dave", "wrong") == {"auth": {"success": False}}


def test_plain_auth_output_with_an_empty_first_line_leaves_it_to_the_exit_status(
    tmp_path: Path,
) -> None:
    script = tmp_path / "auth.sh"
    script.write_text('#!/bin/sh\nprintf "\\nDave Bowman\\n"\n')
    script.chmod(0o755)
    store = exec_store_for(
        only(auth={"command": str(script), "output": {"type": "plain"}})
    )

    assert store.authenticate(DAVE, "dave", "x") == AuthResult(
        DAVE, Profile("Dave Bowman")
    )


def test_user_directory_search_runs_the_directory_script(
    exec_client: Any, fake_homeserver: FakeHomeserver, caplog: pytest.LogCaptureFixture
) -> None:
    sections = directory_sections(fake_homeserver)
    working = exec_client(exec_section(), **sections)
    broken = exec_client(
        only(directory__search__byName=misbehaving("garbage")), **sections
    )

    assert directory_search(working, "bowman") == DAVE_IN_DIRECTORY
    assert directory_search(broken, "bowman") == {"limited": False, "results": []}
    assert any(
        "directory store failed store=exec" in r.getMessage() for r in caplog.records
    )
