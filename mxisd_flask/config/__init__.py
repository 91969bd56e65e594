"""Load the YAML configuration once, check it, and freeze it into sections."""

from __future__ import annotations

import difflib
import logging
import os
from typing import Any

import yaml

from mxisd_flask.config.schema import FREE_FORM, REQUIRED, SCHEMA
from mxisd_flask.config.sections import Config, build_config
from mxisd_flask.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["WARNINGS", "Config", "ConfigError", "load_config", "parse_config"]

# Warnings of the last parse, for ``mxisd check-config`` to report.
WARNINGS: list[str] = []


def load_config(path: str | None = None) -> Config:
    """Read the file at ``path`` (or ``$MXISD_CONFIG``) into a Config."""
    path = path or os.environ.get("MXISD_CONFIG")
    if not path:
        raise ConfigError("no configuration file: pass --config or set MXISD_CONFIG")
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse_config(raw, base_dir=os.path.dirname(os.path.abspath(path)))


def parse_config(raw: Any, base_dir: str = ".") -> Config:
    """Check a parsed YAML document and build the frozen Config from it."""
    WARNINGS.clear()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a YAML mapping")
    _apply_env_overrides(raw)
    flat: dict[str, Any] = {}
    _flatten(raw, "", flat)
    values: dict[str, Any] = {}
    for key, (types, default) in SCHEMA.items():
        if key not in flat or flat[key] is None:
            if default is REQUIRED:
                raise ConfigError(f"{key}: required key is missing")
            values[key] = default
            continue
        value = flat[key]
        if isinstance(value, bool) and bool not in types:
            raise ConfigError(f"{key}: expected {_names(types)}, got a boolean")
        if not isinstance(value, types):
            raise ConfigError(
                f"{key}: expected {_names(types)}, got {type(value).__name__}"
            )
        values[key] = value
    return build_config(values, base_dir)


def _flatten(node: dict[Any, Any], prefix: str, out: dict[str, Any]) -> None:
    for name, value in node.items():
        key = f"{prefix}{name}"
        is_section = any(k.startswith(key + ".") for k in SCHEMA)
        if key in SCHEMA or key in FREE_FORM:
            out[key] = value
        elif is_section and isinstance(value, dict):
            _flatten(value, key + ".", out)
        elif is_section and value is None:
            continue  # an empty section, as YAML writes "matrix:" alone
        else:
            _warn_unknown(key)


def _warn_unknown(key: str) -> None:
    close = difflib.get_close_matches(key, SCHEMA, n=1, cutoff=0.8)
    hint = f" (did you mean {close[0]}?)" if close else ""
    WARNINGS.append(f"unknown key {key} ignored{hint}")
    logger.warning("unknown configuration key ignored key=%s%s", key, hint)


def _apply_env_overrides(raw: dict[str, Any]) -> None:
    """MXISD_<SECTION>__<KEY> env vars supply secrets without the file."""
    for name, value in os.environ.items():
        if not name.startswith("MXISD_") or "__" not in name:
            continue
        parts = name[len("MXISD_") :].split("__")
        wanted = ".".join(parts).lower()
        key = next((k for k in SCHEMA if k.lower() == wanted), None)
        if key is None:
            WARNINGS.append(f"environment variable {name} names no key, ignored")
            logger.warning("environment variable names no key, ignored name=%s", name)
            continue
        node = raw
        *parents, leaf = key.split(".")
        for depth, part in enumerate(parents, 1):
            if node.get(part) is None:
                node[part] = {}  # absent, or an empty "server:" line
            node = node[part]
            if not isinstance(node, dict):
                section = ".".join(parents[:depth])
                raise ConfigError(f"{section}: expected a mapping to hold {name}")
        node[leaf] = _env_value(name, key, value)


def _env_value(name: str, key: str, value: str) -> Any:
    """A variable's text as the key's type: YAML's reading of it, as in the
    file (true, 8090, 0.5, [a, b]), for keys that take no string."""
    types = SCHEMA[key][0]
    if str in types:
        return int(value) if int in types and value.isdigit() else value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        # The value itself stays out of the message: it may be a secret.
        raise ConfigError(f"{key}: {name} is not valid YAML") from None


def _names(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)
