"""HTML pages a person sees after clicking a validation link."""

from __future__ import annotations

import html
import urllib.parse

from flask import Response

from mxisd_flask.notify.templates import render


def render_view(path: str, values: dict[str, str], status: int) -> Response:
    """Render an admin-replaceable HTML template exactly as written."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    escaped = {name: html.escape(value) for name, value in values.items()}
    return Response(render(text, escaped), status=status, mimetype="text/html")


def safe_next_link(next_link: str | None) -> str | None:
    """A next_link we may redirect to: absolute http(s) only, never javascript:."""
    if not next_link:
        return None
    # Refused at requestToken since; a session stored before may hold one.
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in next_link):
        return None
    parts = urllib.parse.urlsplit(next_link)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return next_link
