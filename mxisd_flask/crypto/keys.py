"""The server's long-term ed25519 signing key and JSON signing."""

from __future__ import annotations

import logging
import os
from typing import Any

import signedjson.key
import signedjson.sign
from signedjson.types import SigningKey, VerifyKey
from unpaddedbase64 import encode_base64

from mxisd_flask.errors import ConfigError

logger = logging.getLogger(__name__)

KEY_ID = "ed25519:0"


def load_or_create_signing_key(path: str) -> SigningKey:
    """Read the key file at ``path``, creating it (mode 0600) on first start."""
    try:
        return load_signing_key(path)
    except FileNotFoundError:
        return _create(path)


def load_signing_key(path: str) -> SigningKey:
    """Read the key file: one line in Synapse's form, ``ed25519 0 <seed>``.

    Raises:
        FileNotFoundError: there is no key file yet.
        ConfigError: the file cannot be read or holds no key.
    """
    try:
        with open(path, encoding="ascii") as handle:
            keys = signedjson.key.read_signing_keys(handle)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigError(f"key.path: cannot read signing key {path}") from exc
    if not keys:
        raise ConfigError(f"key.path: {path} holds no signing key")
    return keys[0]


def _create(path: str) -> SigningKey:
    key = signedjson.key.generate_signing_key("0")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another worker created it between our read and our write.
        return load_or_create_signing_key(path)
    except OSError as exc:
        raise ConfigError(f"key.path: cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        signedjson.key.write_signing_keys(handle, [key])
    logger.info("signing key created key_id=%s path=%s", KEY_ID, path)
    return key


def public_key_b64(key: SigningKey | VerifyKey) -> str:
    verify = getattr(key, "verify_key", key)
    return encode_base64(bytes(verify))


def sign_json(obj: dict[str, Any], server_name: str, key: SigningKey) -> dict[str, Any]:
    """Return ``obj`` with our signature added under ``signatures``."""
    signed: dict[str, Any] = signedjson.sign.sign_json(dict(obj), server_name, key)
    return signed


def verify_signature(
    obj: dict[str, Any], server_name: str, key_id: str, public_key: str
) -> bool:
    """Whether ``obj`` carries a valid signature by ``server_name``'s key."""
    algorithm, _, version = key_id.partition(":")
    if algorithm != "ed25519" or not version:
        return False
    try:
        verify_key = signedjson.key.decode_verify_key_base64(
            algorithm, version, public_key
        )
        signedjson.sign.verify_signed_json(obj, server_name, verify_key)
    except (signedjson.sign.SignatureVerifyException, ValueError):
        # ValueError: the published key is not base64 or not 32 bytes.
        return False
    return True
