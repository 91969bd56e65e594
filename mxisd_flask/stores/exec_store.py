"""mxisd's exec store: identities from scripts the admin writes.

Each action (password check, directory search, single and bulk lookup, the
three profile questions) runs one configured command; see
:mod:`mxisd_flask.stores.exec_process` for how it is run. Input and output
follow mxisd's exec store: JSON shaped like its REST backend API (the
request bodies flat, as mxisd's exec store wrote them) or line-based plain
text. Exit statuses in ``exit.failure`` mean "not found" or "refused"; any
other status than those and ``exit.success`` is a store failure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mxisd_flask.config.keys.exec_store import FEATURES
from mxisd_flask.config.sections import Config
from mxisd_flask.errors import ConfigError, StoreError
from mxisd_flask.stores import backend_json
from mxisd_flask.stores.base import (
    AuthResult,
    Capability,
    DirectoryEntry,
    IdentityStore,
    Profile,
    ThreePid,
)
from mxisd_flask.stores.exec_process import (
    ProcessConfig,
    RunResult,
    UnframeableInputError,
    process_config,
    render_input,
    run,
)

logger = logging.getLogger(__name__)

FEATURE_CAPABILITY = {
    "auth": Capability.AUTH,
    "directory": Capability.DIRECTORY,
    "identity": Capability.LOOKUP,
    "listing": Capability.LISTING,
    "profile": Capability.PROFILE,
}
# Output types each action can parse, the default first. None: the exit
# status alone decides (mxisd's auth default); json everywhere else, the one
# format every action can answer in.
OUTPUTS: dict[str, tuple[str | None, ...]] = {
    "auth": (None, "json", "plain"),
    "single": ("json", "plain"),
    "bulk": ("json",),
    "listing": ("json",),
    "directory": ("json",),
    "profile": ("json",),
}


@dataclass(frozen=True)
class ExecConfig:
    auth: ProcessConfig
    by_name: ProcessConfig
    by_threepid: ProcessConfig
    single: ProcessConfig
    bulk: ProcessConfig
    listing: ProcessConfig
    display_name: ProcessConfig
    threepid: ProcessConfig
    role: ProcessConfig


def _enabled_features(values: Mapping[str, Any]) -> set[str]:
    """mxisd's rule: a feature's own switch, or else ``exec.enabled``."""
    default = values["exec.enabled"]
    found = set()
    for feature in FEATURES:
        own = values[f"exec.{feature}.enabled"]
        if own if own is not None else default:
            found.add(feature)
    return found


def exec_config(values: Mapping[str, Any], base_dir: str) -> ExecConfig:
    def action(key: str, output: str) -> ProcessConfig:
        return process_config(values, key, base_dir, OUTPUTS[output])

    bulk = action("exec.identity.lookup.bulk", "bulk")
    listing = action("exec.identity.listing", "listing")
    for fixed in (bulk, listing):
        if fixed.input_template is not None:
            # As in mxisd's bulk: one fixed input form per input type.
            raise ConfigError(f"{fixed.key}.input.template: not supported")
    return ExecConfig(
        auth=action("exec.auth", "auth"),
        by_name=action("exec.directory.search.byName", "directory"),
        by_threepid=action("exec.directory.search.byThreepid", "directory"),
        single=action("exec.identity.lookup.single", "single"),
        bulk=bulk,
        listing=listing,
        display_name=action("exec.profile.displayName", "profile"),
        threepid=action("exec.profile.threePid", "profile"),
        role=action("exec.profile.role", "profile"),
    )


def _offered(config: ExecConfig) -> set[Capability]:
    offered = set()
    if config.auth.command:
        offered.add(Capability.AUTH)
    if config.by_name.command or config.by_threepid.command:
        offered.add(Capability.DIRECTORY)
    if config.single.command or config.bulk.command:
        offered.add(Capability.LOOKUP)
    if config.listing.command:
        offered.add(Capability.LISTING)
    if config.display_name.command or config.threepid.command or config.role.command:
        offered.add(Capability.PROFILE)
    return offered


def from_config(config: Config) -> ExecIdentityStore | None:
    features = _enabled_features(config.values)
    if not features:
        return None
    store = ExecIdentityStore(
        exec_config(config.values, config.base_dir),
        config.domain,
        frozenset(FEATURE_CAPABILITY[f] for f in features),
    )
    if not store.capabilities:
        logger.warning("exec store enabled but no enabled action has a command")
        return None
    return store


class ExecIdentityStore(IdentityStore):
    name = "exec"
    SUPPORTED = frozenset(FEATURE_CAPABILITY.values())

    def __init__(
        self,
        config: ExecConfig,
        domain: str,
        capabilities: frozenset[Capability] = SUPPORTED,
    ) -> None:
        self.config = config
        self.domain = domain
        self.capabilities = frozenset(capabilities & _offered(config))

    def lookup(self, medium: str, address: str) -> str | None:
        if Capability.LOOKUP not in self.capabilities:
            return None  # also keeps lookup and bulk_lookup from calling round
        process = self.config.single
        if not process.command:
            return self.bulk_lookup([(medium, address)]).get((medium, address))
        values = {"medium": medium, "address": address}
        plain = f"{process.token('medium')}\n{process.token('address')}"
        result = self._run(
            process, values, backend_json.single_request(**values), plain
        )
        if result is None or not result.succeeded or not result.output.strip():
            return None
        if process.output_type == "plain":
            return self._plain_user_id(result.output)
        return backend_json.parse_single(_json(process, result), self.domain)

    def _plain_user_id(self, output: str) -> str | None:
        """One line (a localpart), or two: the id type, then the value."""
        lines = output.rstrip("\r\n").splitlines()
        if len(lines) > 2:
            raise StoreError("exec.identity.lookup.single: more than 2 lines")
        if len(lines) == 1:
            return backend_json.canonical_mxid(
                lines[0].strip(), self.domain, "localpart"
            )
        id_type = lines[0].strip() or "localpart"
        return backend_json.canonical_mxid(lines[1].strip(), self.domain, id_type)

    def bulk_lookup(self, threepids: Sequence[ThreePid]) -> dict[ThreePid, str]:
        if Capability.LOOKUP not in self.capabilities:
            return {}
        process = self.config.bulk
        if not process.command:
            return super().bulk_lookup(threepids)
        if process.input_type == "plain":
            # One "medium<TAB>address" line each: a 3PID holding either
            # separator cannot be framed, and no store could hold it anyway.
            threepids = [tp for tp in threepids if not _breaks_lines(tp)]
        found: dict[ThreePid, str] = {}
        for start in range(0, len(threepids), backend_json.BULK_CHUNK):
            chunk = threepids[start : start + backend_json.BULK_CHUNK]
            found.update(self._bulk_chunk(process, chunk))
        return found

    def _bulk_chunk(
        self, process: ProcessConfig, chunk: Sequence[ThreePid]
    ) -> dict[ThreePid, str]:
        if process.input_type == "plain":
            stdin: str | None = "".join(f"{m}\t{a}\n" for m, a in chunk)
        elif process.input_type == "json":
            stdin = json.dumps(backend_json.bulk_request(chunk))
        else:
            stdin = None
        result = run(process, {}, stdin)
        if not result.succeeded or not result.output.strip():
            return {}
        return backend_json.parse_bulk(_json(process, result), self.domain, chunk)

    def iter_threepids(self) -> Iterator[tuple[str, str, str]]:
        """Every 3PID the listing script gives, one run per page."""
        process = self.config.listing

        def page(cursor: str | None) -> Any:
            if cursor is not None and _breaks_lines(("", cursor)):
                raise StoreError(f"{process.key}: a cursor holds a line break")
            if process.input_type == "json":
                stdin: str | None = json.dumps({"listing": {"from": cursor}})
            elif process.input_type == "plain":
                stdin = f"{cursor or ''}\n"
            else:
                stdin = None
            result = run(process, {}, stdin)
            if not result.succeeded or not result.output.strip():
                return None
            return _json(process, result)

        return backend_json.iter_listing(page, self.domain, process.key)

    def authenticate(
        self, mxid: str, localpart: str, password: str
    ) -> AuthResult | None:
        process = self.config.auth
        values = {**backend_json.user_parts(mxid), "password": password}
        plain = "".join(
            f"{process.token(n)}\n" for n in ("localpart", "domain", "mxid", "password")
        )
        result = self._run(process, values, values, plain)
        if result is None or not result.succeeded:
            return None
        output = result.output
        if process.output_type is None or not output.strip():
            return AuthResult(mxid=mxid.lower())
        if process.output_type == "plain":
            return _plain_auth(output, mxid)
        return backend_json.parse_auth(
            _json(process, result), mxid, self.domain, assume_success=True
        )

    def directory_search(self, term: str, by_threepid: bool) -> list[DirectoryEntry]:
        # mxisd ran byName for both searches, so a file that configures only
        # byName keeps answering 3PID searches through it.
        process = self.config.by_threepid if by_threepid else self.config.by_name
        if not process.command:
            process = self.config.by_name
        if not process.command:
            return []
        request = backend_json.directory_request(term, by_threepid)
        values = {"type": request["by"], "query": term}
        plain = f"{process.token('type')}\n{process.token('query')}"
        result = self._run(process, values, request, plain)
        if result is None or not result.succeeded or not result.output.strip():
            return []
        return backend_json.parse_directory(_json(process, result), self.domain)

    def profile(self, mxid: str) -> Profile | None:
        values = backend_json.user_parts(mxid)
        config = self.config
        processes = (config.display_name, config.threepid, config.role)

        def ask(process: ProcessConfig) -> Any:
            plain = "".join(
                f"{process.token(n)}\n" for n in ("localpart", "domain", "mxid")
            )
            result = self._run(process, values, values, plain)
            if result is None or not result.succeeded or not result.output.strip():
                return None
            return _json(process, result)

        return backend_json.ask_profile(
            [p if p.command else None for p in processes], ask
        )

    def _run(
        self,
        process: ProcessConfig,
        values: Mapping[str, str],
        json_body: Any,
        plain_default: str,
    ) -> RunResult | None:
        """Run ``process``; None when its plain input cannot carry a value."""
        try:
            stdin = render_input(process, values, json_body, plain_default)
        except UnframeableInputError:
            logger.debug("exec skipped key=%s: a value holds a line break", process.key)
            return None
        return run(process, values, stdin)


def _breaks_lines(threepid: ThreePid) -> bool:
    return any(c in part for part in threepid for c in "\t\r\n")


def _json(process: ProcessConfig, result: RunResult) -> Any:
    try:
        return json.loads(result.output)
    except (ValueError, RecursionError) as exc:
        raise StoreError(f"{process.key}: output is not JSON") from exc


def _plain_auth(output: str, mxid: str) -> AuthResult | None:
    """mxisd's plain auth answer: "true" or "1", then maybe a display name."""
    lines = output.rstrip("\r\n").splitlines()
    if len(lines) > 2:
        raise StoreError("exec.auth: more than 2 lines of output")
    if lines[0].strip() and lines[0].strip().lower() not in ("true", "1"):
        return None
    name = lines[1].strip() if len(lines) == 2 else ""
    return AuthResult(mxid=mxid.lower(), profile=Profile(display_name=name or None))
