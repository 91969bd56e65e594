"""Configuration keys of phone numbers, SMS and notification templates (issue #5)."""

from __future__ import annotations

from typing import Any

KEYS: dict[str, tuple[tuple[type, ...], Any]] = {}
