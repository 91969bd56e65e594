"""Fixtures: a real DNS server (SRV records) and a second identity server."""

from __future__ import annotations
