"""mxisd's internal API for the homeserver: password checks.

Not part of the Identity Service spec: Synapse's password module (ours in
contrib/synapse/, or the older REST password provider) posts a user's
password here. Only the addresses in ``auth.internal.allowedCidr`` may call it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from mxisd_flask.errors import Forbidden, InvalidParam, MissingParams
from mxisd_flask.http.request import client_address, json_body, require_str, services
from mxisd_flask.stores.base import AuthResult

bp = Blueprint("internal_auth", __name__, url_prefix="/_matrix-internal/identity/v1")


@bp.post("/check_credentials")
def check_credentials() -> Response:
    """POST /_matrix-internal/identity/v1/check_credentials"""
    auth = services().auth
    if not auth.is_internal(client_address()):
        raise Forbidden("This endpoint is for the homeserver only")

    body = json_body()
    user = body.get("user")
    if user is None:
        raise MissingParams("Missing parameters: user")
    if not isinstance(user, dict):
        raise InvalidParam("user must be an object")
    user_id, password = require_str(user, "id", "password")

    result = auth.check_credentials(user_id, password)
    return jsonify({"auth": _auth_json(result)})


def _auth_json(result: AuthResult | None) -> dict[str, Any]:
    if result is None:
        return {"success": False}
    profile = result.profile
    return {
        "success": True,
        "id": {"type": "mxid", "value": result.mxid},
        "profile": {
            "display_name": profile.display_name,
            "three_pids": [
                {"medium": medium, "address": address}
                for medium, address in profile.threepids
            ],
            # Ours, beside the fields Synapse's modules read: a module or a
            # homeserver-side script may map them to groups or admin rights.
            "roles": list(profile.roles),
        },
    }
