"""mxisd-style templates: whole files with %PLACEHOLDER% markers."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping

PLACEHOLDER_RE = re.compile(r"%([A-Z][A-Z0-9_]*)%")


def with_url_encoded(values: Mapping[str, str]) -> dict[str, str]:
    """Add the ``<NAME>_URL_ENCODED`` form of every placeholder."""
    out = dict(values)
    for name, value in values.items():
        out[f"{name}_URL_ENCODED"] = urllib.parse.quote(value, safe="")
    return out


def render(text: str, values: Mapping[str, str]) -> str:
    """Replace each known %NAME%; unknown markers stay, as mxisd leaves them."""

    def substitute(match: re.Match[str]) -> str:
        return values.get(match.group(1), match.group(0))

    return PLACEHOLDER_RE.sub(substitute, text)


def render_message(text: str, values: Mapping[str, str]) -> str:
    """Render an .eml template; header values lose line breaks.

    A display name or room name with a newline must not be able to add a
    header (Bcc:, say), so values placed in the header block are flattened.
    """
    text = text.replace("\r\n", "\n")
    head, sep, body = text.partition("\n\n")
    flat = {k: re.sub(r"[\r\n]+", " ", v) for k, v in values.items()}
    return render(head, flat) + sep + render(body, values)
