"""Normalising 3PIDs read in bulk from a store, for the hash index.

The index must hold every address exactly as
:func:`mxisd_flask.model.normalise_address` would write it, or a hashed
lookup would miss what a plain lookup finds. The full email check costs
about 35 µs, too slow for a million rows, so plain ASCII addresses that the
full check is known to accept unchanged but for case take a quick path; any
other address goes through the full check.
"""

from __future__ import annotations

import re

from email_validator import SPECIAL_USE_DOMAIN_NAMES

from mxisd_flask.errors import MatrixError
from mxisd_flask.model import normalise_address

# A strict subset of RFC 5322 dot-atoms over a DNS name with an alphabetic
# top-level label: what email_validator accepts and only lower-cases.
_PLAIN_EMAIL = re.compile(
    r"[a-z0-9_+\-]{1,64}(?:\.[a-z0-9_+\-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.)+([a-z]{2,63})"
)
_SPECIAL_TLDS = frozenset(SPECIAL_USE_DOMAIN_NAMES)


def normalise_listed(medium: object, address: object) -> str | None:
    """``address`` normalised for ``medium``, or None if it is not valid."""
    if not isinstance(medium, str) or not isinstance(address, str):
        return None
    if medium == "email":
        quick = _plain_email(address)
        if quick is not None:
            return quick
    try:
        return normalise_address(medium, address)
    except MatrixError:
        return None


def _plain_email(address: str) -> str | None:
    if not address.isascii() or len(address) > 254:
        return None
    lowered = address.lower()
    match = _PLAIN_EMAIL.fullmatch(lowered)
    if match is None or match.group(1) in _SPECIAL_TLDS or "xn--" in lowered:
        return None
    local = lowered.partition("@")[0]
    return lowered if len(local) <= 64 else None
