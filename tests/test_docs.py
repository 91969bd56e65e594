"""Every YAML example in the docs loads, with no unknown key, so the docs
cannot drift from the code."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import deep_merge
from mxisd_flask.config import WARNINGS, parse_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
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
