"""Reading requests: JSON bodies, typed fields, access tokens, client address."""

from __future__ import annotations

import io
import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any, TypeGuard

from flask import current_app, request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import RequestEntityTooLarge

from mxisd_flask.errors import BadJson, InvalidParam, MissingParams, NotJson
from mxisd_flask.services import Services
from mxisd_flask.stores.remote import MARKER_HEADER

# Where authenticated_user keeps the caller's mxid for the request.
_USER_KEY = "mxisd.user_id"

# The largest request body read; a longer one is answered 413.
MAX_BODY_BYTES = 1 << 20

# The recursion marker header as the WSGI environ names it.
_MARKER_KEY = "HTTP_" + MARKER_HEADER.upper().replace("-", "_")


def services() -> Services:
    found: Services = current_app.extensions["mxisd"]
    return found


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# One decoder for every request: json.loads with a keyword argument builds
# a new one each call, which costs as much as decoding a lookup's body.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


# JSON escapes that decode to text no field may hold: NUL (PostgreSQL refuses
# it in strings) and surrogates, which are only valid in pairs.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def json_body(allow_form: bool = False) -> dict[str, Any]:
    """The request body as a JSON object (or, for legacy v1, a form)."""
    if allow_form and request.mimetype == "application/x-www-form-urlencoded":
        form = request.form.to_dict()
        if any("\x00" in v for v in form.values()):
            raise InvalidParam("Parameters may not contain NUL characters")
        return form
    raw = _body_bytes()
    try:
        # As json.loads decodes bytes: UTF-8, -16 or -32, told by the first bytes.
        body = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except (ValueError, RecursionError) as exc:
        raise NotJson("Content not JSON") from exc
    if not isinstance(body, dict):
        raise BadJson("The body must be a JSON object")
    if _SUSPECT_ESCAPE.search(raw):
        _check_text(body)
    return body


def _body_bytes() -> bytes:
    """The request body. With a Content-Length within the app's limit, read
    straight from the WSGI input: werkzeug's stream wrappers cost a v2
    lookup a tenth of its time under gunicorn (bench/RESULTS.md). Anything
    else (no length, chunked, too long) goes through werkzeug, which
    answers 413, and a chunked body read_streamed_body has read already."""
    environ = request.environ
    length = environ.get("CONTENT_LENGTH")
    if (
        length
        and length.isascii()
        and length.isdigit()
        and int(length) <= MAX_BODY_BYTES
        and "HTTP_TRANSFER_ENCODING" not in environ
    ):
        raw: bytes = environ["wsgi.input"].read(int(length))
        # Whoever reads the body later (request.get_data) finds it again.
        environ["wsgi.input"] = io.BytesIO(raw)
        return raw
    return request.get_data(cache=True)


def _check_text(body: dict[str, Any]) -> None:
    text = json.dumps(body, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadJson("Strings may not hold unpaired surrogates") from exc
    if "\\u0000" in text:
        raise BadJson("Strings may not contain NUL characters")


def read_streamed_body() -> None:
    """Read a body sent without Content-Length (chunked) before any view.

    Werkzeug stops reading such a body at MAX_CONTENT_LENGTH without a word,
    so the view would see its first MiB as the whole; and gunicorn raises
    its own errors for malformed chunks from inside the view's read.
    """
    # The environ first: one dict lookup for every request without a body,
    # where werkzeug's header view and content_length cost 3 us.
    if "HTTP_TRANSFER_ENCODING" not in request.environ:
        return
    if request.content_length is not None:
        return

    try:
        request.get_data(cache=True)
        more = request.environ["wsgi.input"].read(1)
    except ParseException as exc:
        raise BadJson("Malformed chunked request body") from exc
    if more:
        raise RequestEntityTooLarge()


def reject_nul_in_query() -> None:
    """Query parameters holding NUL are refused before any view reads them."""
    if b"%00" in request.query_string:
        raise InvalidParam("Parameters may not contain NUL characters")


def require_str(body: Mapping[str, Any], *names: str) -> list[str]:
    missing = [n for n in names if body.get(n) is None]
    if missing:
        raise MissingParams(f"Missing parameters: {', '.join(missing)}")
    values = []
    for name in names:
        value = body[name]
        if not isinstance(value, str):
            raise InvalidParam(f"{name} must be a string")
        values.append(value)
    return values


def is_str_list(value: object) -> TypeGuard[list[str]]:
    """Whether ``value`` is a list of strings. JSON decodes to exact types, so
    comparing the set of item types suffices: one loop in C rather than one
    call per item, for the up to 10,000 hashes of a v2 lookup."""
    return isinstance(value, list) and set(map(type, value)) <= {str}


def optional_str(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidParam(f"{name} must be a string")
    return value


_DIGITS = re.compile(r"[0-9]{1,16}")


def require_int(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name)
    if value is None:
        raise MissingParams(f"Missing parameters: {name}")
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)  # legacy v1 form posts send numbers as text
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidParam(f"{name} must be an integer")
    return value


def access_token() -> str | None:
    # From the environ, where werkzeug's header view would look it up.
    header = request.environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer":  # auth schemes are case-insensitive
        return credentials.strip() or None
    # Synapse still sends the token as a query parameter on some calls.
    return request.args.get("access_token") or None


def authenticated_user() -> str:
    """The v2 caller's mxid; 401 without a valid token, 403 without terms."""
    # Kept in the environ for the rest of the request: one dict lookup,
    # where each use of flask.g goes through a context proxy.
    environ = request.environ
    found: str | None = environ.get(_USER_KEY)
    if found is not None:
        return found
    svc = services()
    user_id = svc.accounts.user_for_token(access_token())
    svc.terms.check(user_id, request.path)
    environ[_USER_KEY] = user_id
    return user_id


def client_address() -> str:
    """The client's address, believing X-Forwarded-For only from our proxies."""
    # Read from the WSGI environ: werkzeug's header view costs more than the
    # rest of this on every v1 lookup.
    environ = request.environ
    candidate: str = environ.get("REMOTE_ADDR") or ""
    forwarded = environ.get("HTTP_X_FORWARDED_FOR")
    if not forwarded:
        return candidate
    proxies = services().config.server.trusted_proxies
    hops = [h.strip() for h in forwarded.split(",")]
    for hop in reversed([h for h in hops if h]):
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            return candidate
        if not any(address in net for net in proxies):
            return candidate
        candidate = hop
    return candidate


def may_recurse() -> bool:
    """Whether this lookup may ask other identity servers (the client's
    address after our proxies, and no recursion marker of ours)."""
    policy = services().recursion
    if not policy.enabled:
        # The usual case: no need to work out the client's address (about a
        # tenth of a v1 lookup's time in the app).
        return False
    marked = _MARKER_KEY in request.environ
    return policy.allows(client_address(), marked)
