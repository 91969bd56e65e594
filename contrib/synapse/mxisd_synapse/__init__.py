"""Synapse module: password logins checked by mxisd-flask's check_credentials."""

from __future__ import annotations

from mxisd_synapse.provider import MxisdPasswordProvider, ProviderConfig

__all__ = ["MxisdPasswordProvider", "ProviderConfig"]
__version__ = "0.1.0"
