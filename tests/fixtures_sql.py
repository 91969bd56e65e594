"""Fixtures: SQL and synapseSql store databases."""

from __future__ import annotations
