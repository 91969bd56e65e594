"""Normalising 3PIDs read in bulk from a store, for the hash index.

The index must hold every address exactly as
:func:`mxisd_flask.model.normalise_address` would write it, or a hashed
lookup would miss what a plain lookup finds; a store's row that is no valid
address is left out rather than failing the whole listing.
"""

from __future__ import annotations

from mxisd_flask.errors import MatrixError
from mxisd_flask.model import normalise_address


def normalise_listed(medium: object, address: object) -> str | None:
    """``address`` normalised for ``medium``, or None if it is not valid."""
    if not isinstance(medium, str) or not isinstance(address, str):
        return None
    try:
        return normalise_address(medium, address)
    except MatrixError:
        return None
