"""The application factory."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, jsonify, request

from mxisd_flask.config.sections import Config
from mxisd_flask.http import CORS_HEADERS
from mxisd_flask.http import auth as internal_auth
from mxisd_flask.http import client as client_api
from mxisd_flask.http.errors import register_error_handlers
from mxisd_flask.http.identity import make_blueprint
from mxisd_flask.http.request import (
    MAX_BODY_BYTES,
    read_streamed_body,
    reject_nul_in_query,
)
from mxisd_flask.services import build_services
from mxisd_flask.services.clock import Clock, now_ms
from mxisd_flask.services.notifications import MailSender
from mxisd_flask.storage.counter import ChangeCounters

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger(__name__)


def create_app(
    config: Config,
    clock: Clock = now_ms,
    mail_sender: MailSender | None = None,
    background: bool = False,
) -> Flask:
    """Build the app; ``background`` runs the onbind worker in each process
    that serves (the servers do; tests drive ``services.onbind`` directly)."""
    app = Flask("mxisd_flask")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]  # DefaultJSONProvider
    services = build_services(config, clock, mail_sender)
    app.extensions["mxisd"] = services
    if background:
        services.worker.ensure_running()
        services.chain.start_caches()

    register_error_handlers(app)
    app.register_blueprint(internal_auth.bp)
    app.register_blueprint(client_api.bp)
    if config.serve_v2:
        app.register_blueprint(make_blueprint("v2"))
    if config.serve_v1:
        app.register_blueprint(make_blueprint("v1"))

    @app.get("/_matrix/identity/versions")
    def versions() -> Response:
        """GET /_matrix/identity/versions"""
        return jsonify({"versions": ["r0.3.0", "v1.1", "v1.18"]})

    @app.before_request
    def preflight() -> Response | None:
        if background:
            # gunicorn --preload built the app before forking this worker.
            services.worker.ensure_running()
        # Browsers preflight any path; answer all of them, known or not.
        if request.method == "OPTIONS":
            return jsonify({})
        reject_nul_in_query()
        read_streamed_body()
        return None

    # Flask documents replacing wsgi_app with middleware; mypy sees a method.
    app.wsgi_app = _with_cors(app.wsgi_app)  # type: ignore[method-assign,assignment]
    counters = services.db.change_counters
    if counters is not None:
        app.wsgi_app = _one_reading_per_request(app.wsgi_app, counters)  # type: ignore[method-assign,assignment]
    logger.info("mxisd-flask ready server_name=%s", config.server.name)
    return app


def _with_cors(wsgi_app: WSGIApplication) -> WSGIApplication:
    """Add the CORS headers to every response, error pages included, as it
    starts: a few list appends, where an after_request hook costs a tenth
    of the status endpoint's time in the app (bench/RESULTS.md)."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        def start(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            headers.extend(CORS_HEADERS)
            return start_response(status, headers, *exc)

        return wsgi_app(environ, start)

    return app


def _one_reading_per_request(
    wsgi_app: WSGIApplication, counters: ChangeCounters
) -> WSGIApplication:
    """Each request reads the shared change counters once (storage/counter.py)."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        counters.begin_request()
        try:
            return wsgi_app(environ, start_response)
        finally:
            counters.end_request()

    return app
