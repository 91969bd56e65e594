"""Every error leaves as the spec's JSON: errcode, error, right status."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from mxisd_flask.errors import Errcode, MatrixError, traceback_without_text

logger = logging.getLogger(__name__)


def _json(status: int, errcode: Errcode, error: str) -> tuple[Response, int]:
    return jsonify({"errcode": errcode.value, "error": error}), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(MatrixError)
    def matrix_error(exc: MatrixError) -> tuple[Response, int]:
        return jsonify(exc.to_json()), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        if status in (404, 405):
            return _json(status, Errcode.UNRECOGNIZED, "Unrecognized request")
        if status == 413:
            return _json(status, Errcode.BAD_JSON, "Request body too large")
        if status == 400:
            return _json(status, Errcode.BAD_JSON, "Malformed request")
        return _json(status, Errcode.UNKNOWN, exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        logger.error("unhandled error\n%s", traceback_without_text(exc))
        logger.debug("unhandled error text: %s", exc)
        return _json(500, Errcode.UNKNOWN, "Internal server error")
