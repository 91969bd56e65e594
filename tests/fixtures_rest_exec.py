"""Fixtures: a local REST identity backend and exec scripts."""

from __future__ import annotations
