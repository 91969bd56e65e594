"""Hashing of 3PIDs for v2 lookups (spec: "Client behaviour" of /lookup)."""

from __future__ import annotations

import hashlib
import secrets
import string

from unpaddedbase64 import encode_base64

PEPPER_ALPHABET = string.ascii_letters + string.digits


def lookup_hash(address: str, medium: str, pepper: str) -> str:
    """URL-safe unpadded base64 of sha256("<address> <medium> <pepper>")."""
    digest = hashlib.sha256(f"{address} {medium} {pepper}".encode()).digest()
    return encode_base64(digest, urlsafe=True)


def new_pepper(length: int) -> str:
    return "".join(secrets.choice(PEPPER_ALPHABET) for _ in range(length))
