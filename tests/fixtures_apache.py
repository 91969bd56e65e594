"""Fixtures: a real Apache reverse proxy with TLS."""

from __future__ import annotations
