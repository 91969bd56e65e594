"""Configuration keys of recursive lookups: federation, forwarding (issue #3)."""

from __future__ import annotations

from typing import Any

KEYS: dict[str, tuple[tuple[type, ...], Any]] = {}
