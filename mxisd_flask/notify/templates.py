"""mxisd-style templates: whole files with %PLACEHOLDER% markers.

A mail template is a whole message, as mxisd's are: headers, a blank line,
the body, with MIME parts if it has them. Values are escaped for the part
they land in: HTML-escaped in text/html parts, as they are in text/plain
parts and SMS. Every value is put on one line first, so no value can add a
header, start a MIME part or break an SMS into pieces.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from collections.abc import Mapping
from email.parser import HeaderParser

PLACEHOLDER_RE = re.compile(r"%([A-Z][A-Z0-9_]*)%")


def with_url_encoded(values: Mapping[str, str]) -> dict[str, str]:
    """Add the ``<NAME>_URL_ENCODED`` form of every placeholder."""
    out = dict(values)
    for name, value in values.items():
        out[f"{name}_URL_ENCODED"] = urllib.parse.quote(value, safe="")
    return out


def one_line(values: Mapping[str, str]) -> dict[str, str]:
    """Every value with its line breaks (any Unicode kind) made one space."""
    return {
        name: " ".join(line for line in value.splitlines() if line)
        for name, value in values.items()
    }


def render(text: str, values: Mapping[str, str]) -> str:
    """Replace each known %NAME%; unknown markers stay, as mxisd leaves them."""

    def substitute(match: re.Match[str]) -> str:
        return values.get(match.group(1), match.group(0))

    return PLACEHOLDER_RE.sub(substitute, text)


def render_sms(text: str, values: Mapping[str, str]) -> str:
    """Render an SMS template: plain text, without its final newline."""
    return render(text.replace("\r\n", "\n"), one_line(values)).rstrip("\n")


def render_message(text: str, values: Mapping[str, str]) -> str:
    """Render an .eml template part by part (see the module docstring)."""
    return _render_entity(text.replace("\r\n", "\n"), one_line(values))


def _render_entity(text: str, values: Mapping[str, str]) -> str:
    if text.startswith("\n"):  # a MIME part without headers
        head, sep, body = "", "\n", text[1:]
    else:
        head, sep, body = text.partition("\n\n")
    headers = HeaderParser().parsestr(head + "\n\n")
    boundary = headers.get_boundary()
    if headers.get_content_maintype() == "multipart" and boundary:
        body = _render_multipart(body, boundary, values)
    elif headers.get_content_type() == "text/html":
        body = render(body, {k: html.escape(v) for k, v in values.items()})
    else:
        body = render(body, values)
    return render(head, values) + sep + body


def _render_multipart(body: str, boundary: str, values: Mapping[str, str]) -> str:
    """Render each part between the boundary lines; keep the lines as written."""
    delimiter = re.compile(rf"(^--{re.escape(boundary)}(?:--)?[ \t]*(?:\n|$))", re.M)
    pieces = delimiter.split(body)
    out = [pieces[0]]  # the preamble, which no client shows
    closed = False
    for line, part in zip(pieces[1::2], pieces[2::2], strict=True):
        out.append(line)
        closed = closed or line.rstrip().endswith(f"--{boundary}--")
        out.append(part if closed else _render_entity(part, values))
    return "".join(out)
