"""Fixtures: OpenLDAP (slapd) server with a seeded directory."""

from __future__ import annotations
