"""Fixtures: a local HTTP server speaking Twilio's Messages API."""

from __future__ import annotations
