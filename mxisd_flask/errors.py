"""Matrix error codes and the exceptions that carry them to clients.

Nothing here imports Flask: services raise these, ``http/errors.py`` renders
them as the spec's ``{"errcode": ..., "error": ...}`` JSON.
"""

from __future__ import annotations

import traceback
from enum import Enum
from typing import Any


class Errcode(str, Enum):  # noqa: UP042  # house style: str+Enum
    INVALID_PARAM = "M_INVALID_PARAM"
    MISSING_PARAMS = "M_MISSING_PARAMS"
    BAD_JSON = "M_BAD_JSON"
    NOT_JSON = "M_NOT_JSON"
    INVALID_EMAIL = "M_INVALID_EMAIL"
    INVALID_ADDRESS = "M_INVALID_ADDRESS"
    INVALID_PEPPER = "M_INVALID_PEPPER"
    TOKEN_INCORRECT = "M_TOKEN_INCORRECT"
    SESSION_NOT_VALIDATED = "M_SESSION_NOT_VALIDATED"
    SESSION_EXPIRED = "M_SESSION_EXPIRED"
    THREEPID_IN_USE = "M_THREEPID_IN_USE"
    EMAIL_SEND_ERROR = "M_EMAIL_SEND_ERROR"
    SEND_ERROR = "M_SEND_ERROR"
    UNAUTHORIZED = "M_UNAUTHORIZED"
    UNKNOWN_TOKEN = "M_UNKNOWN_TOKEN"
    FORBIDDEN = "M_FORBIDDEN"
    TERMS_NOT_SIGNED = "M_TERMS_NOT_SIGNED"
    NOT_FOUND = "M_NOT_FOUND"
    NO_VALID_SESSION = "M_NO_VALID_SESSION"
    UNRECOGNIZED = "M_UNRECOGNIZED"
    LIMIT_EXCEEDED = "M_LIMIT_EXCEEDED"
    UNKNOWN = "M_UNKNOWN"


class MatrixError(Exception):
    """An error a client may read: fixed status and errcode per subclass."""

    status: int = 500
    errcode: Errcode = Errcode.UNKNOWN

    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        return {"errcode": self.errcode.value, "error": self.error, **self.extra}


def _error(name: str, status: int, errcode: Errcode) -> type[MatrixError]:
    return type(name, (MatrixError,), {"status": status, "errcode": errcode})


InvalidParam = _error("InvalidParam", 400, Errcode.INVALID_PARAM)
MissingParams = _error("MissingParams", 400, Errcode.MISSING_PARAMS)
BadJson = _error("BadJson", 400, Errcode.BAD_JSON)
NotJson = _error("NotJson", 400, Errcode.NOT_JSON)
InvalidEmail = _error("InvalidEmail", 400, Errcode.INVALID_EMAIL)
InvalidAddress = _error("InvalidAddress", 400, Errcode.INVALID_ADDRESS)
InvalidPepper = _error("InvalidPepper", 400, Errcode.INVALID_PEPPER)
TokenIncorrect = _error("TokenIncorrect", 400, Errcode.TOKEN_INCORRECT)
SessionNotValidated = _error("SessionNotValidated", 400, Errcode.SESSION_NOT_VALIDATED)
SessionExpired = _error("SessionExpired", 400, Errcode.SESSION_EXPIRED)
ThreePidInUse = _error("ThreePidInUse", 400, Errcode.THREEPID_IN_USE)
EmailSendError = _error("EmailSendError", 400, Errcode.EMAIL_SEND_ERROR)
SendError = _error("SendError", 400, Errcode.SEND_ERROR)
Unauthorized = _error("Unauthorized", 401, Errcode.UNAUTHORIZED)
UnknownToken = _error("UnknownToken", 401, Errcode.UNKNOWN_TOKEN)
Forbidden = _error("Forbidden", 403, Errcode.FORBIDDEN)
TermsNotSigned = _error("TermsNotSigned", 403, Errcode.TERMS_NOT_SIGNED)
NotFound = _error("NotFound", 404, Errcode.NOT_FOUND)
NoValidSession = _error("NoValidSession", 404, Errcode.NO_VALID_SESSION)
Unrecognized = _error("Unrecognized", 404, Errcode.UNRECOGNIZED)
# store-invite answers an unsupported medium with 400, not 404 (spec).
UnsupportedMedium = _error("UnsupportedMedium", 400, Errcode.UNRECOGNIZED)
LimitExceeded = _error("LimitExceeded", 429, Errcode.LIMIT_EXCEEDED)
Unknown = _error("Unknown", 500, Errcode.UNKNOWN)


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message names the key."""


class NotifyError(Exception):
    """A notification could not be handed to its transport."""


class FetcherError(Exception):
    """A remote server could not be asked or answered nonsense."""


class HttpStatusError(FetcherError):
    """A remote server answered with a status other than 200."""

    def __init__(self, message: str, status: int, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class StoreError(Exception):
    """An identity store failed; the text may name hosts, never shown to clients."""


def traceback_without_text(exc: BaseException) -> str:
    """The traceback of ``exc`` and of what caused it, each exception named
    by its type only: its text may quote what it failed on (a database error
    names the row, address and all), which only debug may show."""
    parts = []
    link: traceback.TracebackException | None = (
        traceback.TracebackException.from_exception(exc)
    )
    while link is not None:
        parts.append(
            "Traceback (most recent call last):\n"
            + "".join(link.stack.format())
            + f"{link.exc_type.__name__ if link.exc_type else 'unknown'}\n"
        )
        cause = link.__cause__
        if cause is None and not link.__suppress_context__:
            cause = link.__context__
        link = cause
    return "\nwhich was raised while handling:\n".join(parts)
