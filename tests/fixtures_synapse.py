"""Fixtures: a real Synapse homeserver."""

from __future__ import annotations
