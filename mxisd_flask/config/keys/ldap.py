"""Configuration keys of the LDAP / Active Directory store (issue #3)."""

from __future__ import annotations

from typing import Any

KEYS: dict[str, tuple[tuple[type, ...], Any]] = {}
