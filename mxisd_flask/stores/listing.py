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

# A strict subset of RFC 5322 dot-atoms (64 characters at most) over a DNS
# name with an alphabetic top-level label that is not a special-use one and
# no IDNA ("xn--") label: what email_validator accepts and only lower-cases.
_PLAIN_EMAIL = re.compile(
    r"(?!.*xn--)(?=[^@]{1,64}@)"
    r"[a-z0-9_+\-]+(?:\.[a-z0-9_+\-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.)+"
    rf"(?!(?:{'|'.join(map(re.escape, SPECIAL_USE_DOMAIN_NAMES))})$)[a-z]{{2,63}}"
)


def normalise_listed(medium: object, address: object) -> str | None:
    """``address`` normalised for ``medium``, or None if it is not valid."""
    if not isinstance(medium, str) or not isinstance(address, str):
        return None
    if medium == "email" and address.isascii() and len(address) <= 254:
        lowered = address.lower()
        if _PLAIN_EMAIL.fullmatch(lowered):
            return lowered
    try:
        return normalise_address(medium, address)
    except MatrixError:
        return None
