"""Client-server API paths the reverse proxy sends to us instead of the
homeserver: user directory search and login (docs/homeserver.md).

Both answer in the homeserver's own shapes; when the homeserver refuses,
its answer (status and body) goes back to the client unchanged.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from mxisd_flask.errors import InvalidParam, MissingParams, Unauthorized
from mxisd_flask.http.request import (
    access_token,
    client_address,
    json_body,
    services,
)
from mxisd_flask.outbound import Relayed
from mxisd_flask.services.directory import SearchRequest
from mxisd_flask.services.login import LoginRequest

bp = Blueprint("client", __name__, url_prefix="/_matrix/client")

DEFAULT_LIMIT = 10  # the spec's default


@bp.post("/<any(r0, v3):version>/user_directory/search")
def user_directory_search(version: str) -> Response:
    """POST /_matrix/client/v3/user_directory/search"""
    token = access_token()
    if not token:
        raise Unauthorized("Missing access token")
    body = json_body()
    term = body.get("search_term")
    if term is None:
        raise MissingParams("Missing parameters: search_term")
    if not isinstance(term, str):
        raise InvalidParam("search_term must be a string")
    limit = body.get("limit", DEFAULT_LIMIT)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise InvalidParam("limit must be a non-negative integer")

    answer = services().directory.search(
        SearchRequest(version, request.host, token, body, term, limit)
    )
    return relayed(answer) if isinstance(answer, Relayed) else jsonify(answer)


@bp.get("/<any(r0, v3):version>/login")
def login_flows(version: str) -> Response:
    """GET /_matrix/client/v3/login"""
    answer = services().login.flows(version, request.host, request.query_string)
    return relayed(answer)


@bp.post("/<any(r0, v3):version>/login")
def login(version: str) -> Response:
    """POST /_matrix/client/v3/login"""
    headers = {"X-Forwarded-For": client_address()}
    if request.user_agent.string:
        headers["User-Agent"] = request.user_agent.string
    answer = services().login.login(
        LoginRequest(version, request.host, request.get_data(), headers)
    )
    return relayed(answer)


def relayed(answer: Relayed) -> Response:
    return Response(answer.body, status=answer.status, content_type=answer.content_type)
