"""Running one configured exec action: tokens in, exit status and output out.

Values reach the script only as data: the command runs without a shell, each
argument and environment value is one string with the tokens replaced in a
single pass (a value that itself looks like a token is never expanded
again), and stdin is written whole. A run that outlives its time limit is
killed together with everything it started.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mxisd_flask.config.keys.exec_store import TOKENS
from mxisd_flask.config.sections import Secret
from mxisd_flask.errors import ConfigError, StoreError

logger = logging.getLogger(__name__)

MAX_OUTPUT_BYTES = 1 << 20
INPUT_TYPES = ("json", "plain")
# What a script inherits from us: enough to run, none of our secrets (the
# server's own environment may hold MXISD_* credentials).
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


class UnframeableInputError(Exception):
    """A value holds a line break, which plain (line-based) input cannot carry."""


@dataclass(frozen=True)
class ProcessConfig:
    """One action; ``command`` is empty when the admin configured none."""

    key: str
    command: str
    args: tuple[str, ...]
    env: tuple[tuple[str, Secret], ...]  # may hold the admin's API keys
    input_type: str | None
    input_template: str | None
    output_type: str | None
    success: frozenset[int]
    failure: frozenset[int]
    timeout_s: float
    tokens: Mapping[str, str]  # token name -> the text that stands for it

    def token(self, name: str) -> str:
        return self.tokens[name]


def process_config(
    values: Mapping[str, Any],
    key: str,
    base_dir: str,
    output_types: tuple[str | None, ...],
) -> ProcessConfig:
    """The checked action at ``key`` (e.g. ``exec.auth``).

    An unset output type is the first of ``output_types``.
    """
    output_type = values[f"{key}.output.type"] or output_types[0]
    if output_type not in output_types:
        allowed = ", ".join(t for t in output_types if t)
        raise ConfigError(f"{key}.output.type: must be {allowed}")
    if values[f"{key}.output.template"] is not None:
        raise ConfigError(f"{key}.output.template: not supported; use output.type")
    input_type = values[f"{key}.input.type"]
    if input_type is not None and input_type not in INPUT_TYPES:
        raise ConfigError(f"{key}.input.type: must be json or plain")
    timeout = values[f"{key}.timeout"] or values["exec.timeout"]
    if timeout <= 0:
        raise ConfigError(f"{key}.timeout: must be more than 0 seconds")
    return ProcessConfig(
        key=key,
        command=_command(values[f"{key}.command"], f"{key}.command", base_dir),
        args=tuple(_strings(values[f"{key}.args"], f"{key}.args")),
        env=_env(values[f"{key}.env"], f"{key}.env"),
        input_type=input_type,
        input_template=values[f"{key}.input.template"],
        output_type=output_type,
        success=_codes(values[f"{key}.exit.success"], f"{key}.exit.success"),
        failure=_codes(values[f"{key}.exit.failure"], f"{key}.exit.failure"),
        timeout_s=float(timeout),
        tokens={
            name: values[f"{key}.token.{name}"] or values[f"exec.token.{name}"]
            for name in TOKENS
        },
    )


def _command(value: str | None, key: str, base_dir: str) -> str:
    """The absolute path to run: a bare name is looked up on PATH at start."""
    if not value:
        return ""
    if "/" in value:
        path = os.path.join(base_dir, os.path.expanduser(value))
    else:
        path = shutil.which(value) or ""
    if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise ConfigError(f"{key}: {value} is not an executable file")
    return os.path.abspath(path)


def _strings(raw: list[Any], key: str) -> list[str]:
    if not all(isinstance(item, str | int | float) for item in raw):
        raise ConfigError(f"{key}: every entry must be text")
    return [str(item) for item in raw]


def _env(raw: dict[Any, Any], key: str) -> tuple[tuple[str, Secret], ...]:
    pairs = []
    for name, value in raw.items():
        if not isinstance(value, str | int | float) or not str(name):
            raise ConfigError(f"{key}.{name}: must be text")
        pairs.append((str(name), Secret(value)))
    return tuple(pairs)


def _codes(raw: list[Any] | int, key: str) -> frozenset[int]:
    codes = [raw] if isinstance(raw, int) else raw
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
        raise ConfigError(f"{key}: must be a list of exit status numbers")
    return frozenset(codes)


def substitute(
    text: str, process: ProcessConfig, values: Mapping[str, str], as_json: bool = False
) -> str:
    """``text`` with each token of ``values`` replaced, in one pass.

    ``as_json`` escapes each value for a JSON string, so an admin's JSON
    template stays valid JSON whatever quotes or backslashes a value holds.
    """
    replacements = {process.token(name): value for name, value in values.items()}
    if not replacements:
        return text
    pattern = re.compile("|".join(map(re.escape, sorted(replacements, key=len)[::-1])))

    def replace(match: re.Match[str]) -> str:
        value = replacements[match.group(0)]
        return json.dumps(value)[1:-1] if as_json else value

    return pattern.sub(replace, text)


def render_input(
    process: ProcessConfig,
    values: Mapping[str, str],
    json_body: Any,
    plain_default: str,
) -> str | None:
    """What to write to the script's stdin; None when input is not configured.

    Raises:
        UnframeableInputError: plain input and a value that holds a line break.
    """
    if process.input_type is None:
        return None
    if process.input_type == "json":
        if process.input_template is None:
            return json.dumps(json_body)
        return substitute(process.input_template, process, values, as_json=True)
    template = process.input_template or plain_default
    used = {n: v for n, v in values.items() if process.token(n) in template}
    if any("\n" in v or "\r" in v for v in used.values()):
        raise UnframeableInputError(process.key)
    return substitute(template, process, used)


@dataclass(frozen=True)
class RunResult:
    succeeded: bool  # exit status in exit.success (else it was in exit.failure)
    output: str


def run(
    process: ProcessConfig, values: Mapping[str, str], stdin: str | None
) -> RunResult:
    """Run the action; StoreError for a time-out or an unexpected exit status."""
    argv = [process.command] + [substitute(a, process, values) for a in process.args]
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    env.update((name, substitute(v, process, values)) for name, v in process.env)
    logger.debug("exec run key=%s command=%s", process.key, process.command)
    try:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group, killed as one
        )
    except (OSError, ValueError) as exc:
        # ValueError: a NUL byte in an argument or variable.
        raise StoreError(f"{process.key}: cannot run: {type(exc).__name__}") from exc
    out, err = _communicate(child, process, stdin)
    return _result(process, child.returncode, out, err)


def _communicate(
    child: subprocess.Popen[bytes], process: ProcessConfig, stdin: str | None
) -> tuple[bytes, bytes]:
    data = stdin.encode("utf-8") if stdin is not None else None
    try:
        return child.communicate(data, timeout=process.timeout_s)
    except subprocess.TimeoutExpired as exc:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it ended between the time-out and the kill
        child.communicate()
        raise StoreError(
            f"{process.key}: no answer within {process.timeout_s:g} s, killed"
        ) from exc


def _result(process: ProcessConfig, status: int, out: bytes, err: bytes) -> RunResult:
    # A script's stderr may echo what it was given; an auth script's holds
    # the password, so only other actions' stderr is shown, at debug.
    if err and process.key != "exec.auth":
        logger.debug("exec stderr key=%s: %r", process.key, err[:500])
    if status not in process.success and status not in process.failure:
        raise StoreError(f"{process.key}: unexpected exit status {status}")
    if len(out) > MAX_OUTPUT_BYTES:
        raise StoreError(f"{process.key}: output larger than 1 MiB")
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StoreError(f"{process.key}: output is not UTF-8") from exc
    return RunResult(status in process.success, text)
