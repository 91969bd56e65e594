"""gunicorn workers whose own error answers are the spec's JSON.

gunicorn answers a request it cannot parse (a request line with raw
non-ASCII bytes, a URI or header over its limits, a bad chunked body)
itself, before the app sees it, with an HTML page, and logs the offending
request line at warning: query strings and all, so a validation link's
client_secret and token. These workers answer such requests with
``{"errcode", "error"}`` and log only the kind of error.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from gunicorn.http.errors import ParseException
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

from mxisd_flask.errors import Errcode
from mxisd_flask.http import CORS_HEADERS

logger = logging.getLogger(__name__)

# gunicorn's own statuses for the client errors it names, by class name:
# not every gunicorn we accept (22 and later) has every class. Any other
# error of its ParseException family is a plain 400.
_STATUSES: dict[str, tuple[int, str, Errcode]] = {
    "LimitRequestLine": (414, "URI Too Long", Errcode.UNKNOWN),
    "LimitRequestHeaders": (431, "Request Header Fields Too Large", Errcode.UNKNOWN),
    "UnsupportedTransferCoding": (501, "Not Implemented", Errcode.UNKNOWN),
    "ExpectationFailed": (417, "Expectation Failed", Errcode.UNKNOWN),
    "ForbiddenProxyRequest": (403, "Forbidden", Errcode.FORBIDDEN),
}
_BAD_REQUEST = (400, "Bad Request", Errcode.BAD_JSON)
# Faults of ours (a header the app sent, the configuration), not the
# client's: gunicorn's own 500 and traceback stand.
_SERVER_FAULTS = {
    "InvalidResponseHeader",
    "InvalidResponseHeaderName",
    "ConfigurationProblem",
}


def error_answer(exc: BaseException) -> bytes | None:
    """The whole HTTP answer to a request gunicorn could not parse, or None
    when ``exc`` is no client error (gunicorn answers those itself)."""
    names = [klass.__name__ for klass in type(exc).__mro__]
    if not isinstance(exc, ParseException) or _SERVER_FAULTS.intersection(names):
        return None
    status, reason, errcode = next(
        (_STATUSES[n] for n in names if n in _STATUSES), _BAD_REQUEST
    )
    message = "Malformed request" if status == 400 else reason
    body = json.dumps({"errcode": errcode.value, "error": message}).encode()
    cors = "".join(f"{name}: {value}\r\n" for name, value in CORS_HEADERS)
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"{cors}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


class _JsonErrors:
    def handle_error(self, req: Any, client: Any, addr: Any, exc: Exception) -> None:
        answer = error_answer(exc)
        if answer is None:
            super().handle_error(req, client, addr, exc)  # type: ignore[misc]  # gunicorn Worker
            return

        # The error's text quotes the request line or header: not logged.
        ip = addr[0] if addr else ""
        logger.warning("invalid request ip=%s error=%s", ip, type(exc).__name__)
        try:
            client.sendall(answer)
        except OSError:
            # The client went away; nothing is left to tell it.
            return


class JsonErrorsThreadWorker(_JsonErrors, ThreadWorker):  # type: ignore[misc]  # untyped base
    """gunicorn's gthread worker with JSON error answers."""


class JsonErrorsSyncWorker(_JsonErrors, SyncWorker):  # type: ignore[misc]  # untyped base
    """gunicorn's sync worker with JSON error answers."""


def worker_class(name: str, threads: int) -> str:
    """The class gunicorn should load for ``server.workerClass``.

    gunicorn runs a sync worker given more than one thread as its gthread
    worker, and spots a sync worker by a class name ending in SyncWorker:
    ours too, which it would swap for its own. So we make that choice here.
    """
    if name == "sync" and threads == 1:
        return f"{__name__}.{JsonErrorsSyncWorker.__name__}"
    return f"{__name__}.{JsonErrorsThreadWorker.__name__}"
