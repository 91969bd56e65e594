"""Every YAML example in the docs and every sample file in etc/ loads, with
no unknown key, so the docs cannot drift from the code; the README keeps its
order and the pages name their keys. (The Apache example is loaded by a real
Apache in test_apache.py, the systemd drop-in by systemd-analyze in
test_debian_package.py.)"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import deep_merge
from mxisd_flask.config import WARNINGS, load_config, parse_config
from mxisd_flask.config.schema import REQUIRED as NO_DEFAULT
from mxisd_flask.config.schema import SCHEMA

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SAMPLES = sorted((ROOT / "etc").glob("*.yaml"))
# What an admin reads, in the order of the issue that asked for it (#6):
# run it, install it, configure it, put it behind the web server, check it.
README_ORDER = [
    "The two commands",
    "Installing the Debian package",
    "Configuring",
    "Integrating with your homeserver",
    "Validating",
]
# Sections whose keys one page lists: by their full dotted names, or by a
# pattern such as `ldap.attribute.threepid.<medium>` (see _covered).
KEY_PAGES = {
    "matrix.": "configuration.md",
    "server.": "configuration.md",
    "key.": "configuration.md",
    "logging.": "configuration.md",
    "storage.": "storage.md",
    "memory.": "lookups.md",
    "hashing.": "lookups.md",
    "ldap.": "stores-ldap.md",
    "sql.": "stores-sql.md",
    "synapseSql.": "stores-sql.md",
    "rest.": "stores-rest.md",
    "exec.": "stores-exec.md",
    "lookup.": "federation.md",
    "forward.": "federation.md",
    "dns.resolver.": "federation.md",
}
SPAN_RE = re.compile(r"`([^`\s]+)`")
# A key table's row: | `key` (or `key`, `key`) | default | meaning |
KEY_ROW = re.compile(r"^\| `([^`]+)`(?:, `([^`]+)`)? \| ([^|]+?) \|", re.M)
BLOCK_RE = re.compile(r"```yaml\n(.*?)```", re.S)
REQUIRED: dict[str, Any] = {
    "matrix": {"domain": "example.org"},
    "key": {"path": "/tmp/unused.key"},
    "storage": {"provider": {"sqlite": {"database": "/tmp/unused.db"}}},
}
TEMPLATES = {
    "invite.eml": "email/invite.eml",
    "validation.eml": "email/validation.eml",
    "success.html": "view/success.html",
    "failure.html": "view/failure.html",
    "expired.html": "view/expired.html",
    "unbind-fraudulent.eml": "email/unbind-fraudulent.eml",
    "matrixid-invite.eml": "email/matrixid-invite.eml",
    "sms-validation.txt": "sms/validation.txt",
}


def examples() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for i, block in enumerate(BLOCK_RE.findall(doc.read_text())):
            found.append((f"{doc.name}#{i + 1}", block))
    return found


def test_the_docs_have_examples() -> None:
    assert len(examples()) >= 10


@pytest.mark.parametrize("name, block", examples(), ids=[n for n, _ in examples()])
def test_documented_example_loads(name: str, block: str, tmp_path: Path) -> None:
    for target, source in TEMPLATES.items():
        shutil.copy(ROOT / "templates" / source, tmp_path / target)
    text = block.replace("/etc/mxisd/templates/", f"{tmp_path}/")
    raw = deep_merge(yaml.safe_load(yaml.safe_dump(REQUIRED)), yaml.safe_load(text))

    parse_config(raw)

    assert WARNINGS == [], name


def test_etc_has_the_sample_files() -> None:
    names = {path.name for path in SAMPLES}

    assert {"mxisd.example.yaml", "mxisd.dev.yaml", "mxisd.production.yaml"} <= names


@pytest.mark.parametrize("path", SAMPLES, ids=[path.name for path in SAMPLES])
def test_sample_file_loads_without_unknown_keys(path: Path) -> None:
    load_config(str(path))

    assert WARNINGS == [], path.name


def test_readme_sections_come_in_the_admin_s_order() -> None:
    headings = re.findall(r"^## (.+)$", (ROOT / "README.md").read_text(), re.M)

    assert [h for h in headings if h in README_ORDER] == README_ORDER
    assert headings[: len(README_ORDER)] == README_ORDER


@pytest.mark.parametrize("prefix, page", sorted(KEY_PAGES.items()))
def test_page_names_every_key_of_its_section(prefix: str, page: str) -> None:
    spans = set(SPAN_RE.findall((ROOT / "docs" / page).read_text()))
    keys = [key for key in SCHEMA if key.startswith(prefix)]

    missing = [key for key in keys if not _covered(key, spans)]

    assert keys
    assert missing == [], f"docs/{page} does not name {missing}"


def _pattern(span: str) -> re.Pattern[str]:
    """A documented name as a pattern: ``<medium>``, ``<name>`` stand for any
    one part; a name ending in one also covers the mapping it is a key of."""
    parts = re.split(r"(<[^>]+>)", span)
    body = "".join("[^.]+" if p.startswith("<") else re.escape(p) for p in parts)
    if span.endswith(">"):
        # `ldap.attribute.threepid.<medium>` names `ldap.attribute.threepid`.
        body = body.removesuffix(r"\.[^.]+") + r"(\.[^.]+)?"
    return re.compile(body)


def _covered(key: str, spans: set[str]) -> bool:
    patterns = [_pattern(span) for span in spans]
    if any(p.fullmatch(key) for p in patterns):
        return True
    # stores-exec.md: a table of actions and one of the keys every action has.
    return any(
        key.startswith(f"{action}.")
        and any(p.fullmatch(key[len(action) + 1 :]) for p in patterns)
        for action in spans
        if action.startswith("exec.")
    )


def as_documented(value: Any) -> str:
    """A default as the key tables write it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(as_documented(item) for item in value) + "]"
    if isinstance(value, dict) and value:
        return ", ".join(f"{k}: {as_documented(v)}" for k, v in value.items())
    if isinstance(value, dict):
        return "{}"
    return str(value)


@pytest.mark.parametrize("doc", DOCS, ids=[doc.name for doc in DOCS])
def test_key_tables_give_the_defaults_the_code_has(doc: Path) -> None:
    rows = [
        (key, default)
        for *keys, default in KEY_ROW.findall(doc.read_text())
        for key in keys
        if key in SCHEMA
    ]
    wrong = []
    for key, cell in rows:
        default = SCHEMA[key][1]
        literal = re.fullmatch(r"`([^`]*)`", cell)
        if default is NO_DEFAULT:
            ok = cell.startswith("required")
        elif literal and default is not None:
            ok = literal.group(1) == as_documented(default)
        else:
            continue  # described in words: a derived or absent default
        if not ok:
            wrong.append(f"{key}: docs {cell!r}, code {default!r}")

    assert wrong == []


def test_the_key_tables_are_found() -> None:
    for page in ("configuration.md", "storage.md"):
        assert len(KEY_ROW.findall((ROOT / "docs" / page).read_text())) >= 5, page
