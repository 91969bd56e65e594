"""Configuration keys of homeserver integration (issue #4)."""

from __future__ import annotations

from typing import Any

KEYS: dict[str, tuple[tuple[type, ...], Any]] = {}
