"""The Identity Service API, served under the v2 and the legacy v1 prefix.

Views only translate HTTP: parse and check the request, call one service
method, shape the answer. v2 differs from v1 by requiring an access token on
the endpoints the spec marks authenticated, and by its lookup endpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, jsonify, redirect, request

from mxisd_flask.errors import (
    InvalidParam,
    MatrixError,
    MissingParams,
    NotFound,
    SessionExpired,
)
from mxisd_flask.http.request import (
    access_token,
    authenticated_user,
    is_str_list,
    json_body,
    may_recurse,
    optional_str,
    require_int,
    require_str,
    services,
)
from mxisd_flask.http.views import render_view, safe_next_link
from mxisd_flask.services.invite import OPTIONAL_FIELDS


def make_blueprint(version: str) -> Blueprint:
    v2 = version == "v2"
    prefix = "/_matrix/identity/v2" if v2 else "/_matrix/identity/api/v1"
    bp = Blueprint(f"identity_{version}", __name__, url_prefix=prefix)

    def caller() -> str | None:
        return authenticated_user() if v2 else None

    @bp.get("")
    @bp.get("/")
    def status() -> Response:
        """GET /_matrix/identity/v2 (and api/v1): the server is alive."""
        return jsonify({})

    @bp.get("/pubkey/<key_id>")
    def pubkey(key_id: str) -> Response:
        """GET /_matrix/identity/v2/pubkey/{keyId}"""
        public_key = services().keys.pubkey(key_id)
        if public_key is None:
            raise NotFound("The public key was not found")
        return jsonify({"public_key": public_key})

    @bp.get("/pubkey/isvalid")
    def pubkey_isvalid() -> Response:
        """GET /_matrix/identity/v2/pubkey/isvalid"""
        return jsonify({"valid": services().keys.is_valid(_query("public_key"))})

    @bp.get("/pubkey/ephemeral/isvalid")
    def ephemeral_isvalid() -> Response:
        """GET /_matrix/identity/v2/pubkey/ephemeral/isvalid"""
        valid = services().keys.ephemeral_is_valid(_query("public_key"))
        return jsonify({"valid": valid})

    _add_sessions(bp, v2, caller)

    @bp.get("/3pid/getValidated3pid")
    def get_validated_threepid() -> Response:
        """GET /_matrix/identity/v2/3pid/getValidated3pid"""
        caller()
        sid, client_secret = require_str(request.args, "sid", "client_secret")
        found = services().sessions.validated_threepid(sid, client_secret)
        return jsonify(
            {
                "medium": found.medium,
                "address": found.address,
                "validated_at": found.validated_at,
            }
        )

    @bp.post("/3pid/bind")
    def bind() -> Response:
        """POST /_matrix/identity/v2/3pid/bind"""
        user = caller()
        body = json_body(allow_form=not v2)
        sid, client_secret, mxid = require_str(body, "sid", "client_secret", "mxid")
        return jsonify(services().bind.bind(sid, client_secret, mxid, user))

    @bp.post("/3pid/unbind")
    def unbind() -> Response:
        """POST /_matrix/identity/v2/3pid/unbind (with a session, or signed by
        the user's homeserver: X-Matrix authorization, no access token)"""
        signed = request.headers.get("Authorization", "").startswith("X-Matrix ")
        user = None if signed else caller()
        body = json_body()
        (mxid,) = require_str(body, "mxid")
        threepid = body.get("threepid")
        if threepid is None:
            raise MissingParams("Missing parameters: threepid")
        if not isinstance(threepid, dict):
            raise InvalidParam("threepid must be an object with medium and address")
        medium, address = require_str(threepid, "medium", "address")
        if signed:
            origin = services().server_auth.verify(
                request.headers["Authorization"], "POST", signed_uri(), body
            )
            services().bind.unbind_by_homeserver(origin, mxid, medium, address)
            return jsonify({})
        services().bind.unbind(
            optional_str(body, "sid"),
            optional_str(body, "client_secret"),
            mxid,
            medium,
            address,
            user,
        )
        return jsonify({})

    @bp.post("/store-invite")
    def store_invite() -> Response:
        """POST /_matrix/identity/v2/store-invite"""
        caller()
        body = json_body(allow_form=not v2)
        medium, address, room_id, sender = require_str(
            body, "medium", "address", "room_id", "sender"
        )
        extra = {f: v for f in OPTIONAL_FIELDS if (v := optional_str(body, f))}
        answer = services().invites.store_invite(
            medium, address, room_id, sender, extra
        )
        return jsonify(answer)

    @bp.route("/sign-ed25519", methods=["POST"] if v2 else ["GET", "POST"])
    def sign_ed25519() -> Response:
        """POST /_matrix/identity/v2/sign-ed25519"""
        caller()
        body = json_body() if request.method == "POST" else request.args.to_dict()
        mxid, token, private_key = require_str(body, "mxid", "token", "private_key")
        return jsonify(services().invites.sign_ed25519(mxid, token, private_key))

    if v2:
        _add_v2_only(bp)
    else:
        _add_v1_only(bp)
    return bp


def _add_sessions(bp: Blueprint, v2: bool, caller: Callable[[], object]) -> None:
    @bp.post("/validate/email/requestToken")
    def email_request_token() -> Response:
        """POST /_matrix/identity/v2/validate/email/requestToken"""
        caller()
        body = json_body(allow_form=not v2)
        client_secret, email = require_str(body, "client_secret", "email")
        send_attempt = require_int(body, "send_attempt")
        next_link = optional_str(body, "next_link")
        sid = services().sessions.request_email_token(
            client_secret, email, send_attempt, next_link
        )
        return jsonify({"sid": sid})

    @bp.post("/validate/msisdn/requestToken")
    def msisdn_request_token() -> Response:
        """POST /_matrix/identity/v2/validate/msisdn/requestToken"""
        caller()
        body = json_body(allow_form=not v2)
        client_secret, country, number = require_str(
            body, "client_secret", "country", "phone_number"
        )
        send_attempt = require_int(body, "send_attempt")
        next_link = optional_str(body, "next_link")
        sid = services().sessions.request_msisdn_token(
            client_secret, country, number, send_attempt, next_link
        )
        return jsonify({"sid": sid})

    @bp.post("/validate/<any(email, msisdn):medium>/submitToken")
    def submit_token_post(medium: str) -> Response:
        """POST /_matrix/identity/v2/validate/{email,msisdn}/submitToken"""
        caller()
        body = json_body(allow_form=not v2)
        sid, client_secret, token = require_str(body, "sid", "client_secret", "token")
        services().sessions.submit_token(sid, client_secret, token)
        return jsonify({"success": True})

    @bp.get("/validate/<any(email, msisdn):medium>/submitToken")
    def submit_token_get(medium: str) -> Any:
        """GET /_matrix/identity/v2/validate/{email,msisdn}/submitToken

        A person opens this from a message, so it answers with an HTML page
        (or a redirect to the session's next_link), never with JSON.
        """
        svc = services()
        try:
            sid, client_secret, token = require_str(
                request.args, "sid", "client_secret", "token"
            )
            session = svc.sessions.submit_token(sid, client_secret, token)
        except SessionExpired as exc:
            return render_view(svc.notify.expired_view, {"ERROR": exc.error}, 400)
        except MatrixError as exc:
            return render_view(svc.config.failure_view, {"ERROR": exc.error}, 400)
        next_link = safe_next_link(session.next_link)
        if next_link:
            return redirect(next_link, code=302)
        return render_view(svc.config.success_view, {}, 200)


def _add_v2_only(bp: Blueprint) -> None:
    @bp.post("/account/register")
    def account_register() -> Response:
        """POST /_matrix/identity/v2/account/register"""
        body = json_body()
        token, server_name = require_str(body, "access_token", "matrix_server_name")
        our_token = services().accounts.register(token, server_name)
        return jsonify({"token": our_token, "access_token": our_token})

    @bp.get("/account")
    def account() -> Response:
        """GET /_matrix/identity/v2/account"""
        return jsonify({"user_id": authenticated_user()})

    @bp.post("/account/logout")
    def account_logout() -> Response:
        """POST /_matrix/identity/v2/account/logout"""
        services().accounts.logout(access_token())
        return jsonify({})

    @bp.get("/terms")
    def terms() -> Response:
        """GET /_matrix/identity/v2/terms"""
        return jsonify(services().terms.terms())

    @bp.post("/terms")
    def accept_terms() -> Response:
        """POST /_matrix/identity/v2/terms"""
        svc = services()
        user_id = svc.accounts.user_for_token(access_token())
        body = json_body()
        urls = body.get("user_accepts")
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise InvalidParam("user_accepts must be a list of URLs")
        svc.terms.accept(user_id, urls)
        return jsonify({})

    @bp.get("/hash_details")
    def hash_details() -> Response:
        """GET /_matrix/identity/v2/hash_details"""
        authenticated_user()
        return jsonify(services().lookups.hash_details())

    @bp.post("/lookup")
    def lookup() -> Response:
        """POST /_matrix/identity/v2/lookup"""
        authenticated_user()
        body = json_body()
        algorithm, pepper = require_str(body, "algorithm", "pepper")
        addresses = body.get("addresses")
        if not is_str_list(addresses):
            raise InvalidParam("addresses must be a list of strings")
        # Hashed lookups never recurse (LookupService.lookup_v2): no need to
        # work out whether this client may.
        recursive = algorithm != "sha256" and may_recurse()
        mappings = services().lookups.lookup_v2(
            algorithm, pepper, addresses, recursive=recursive
        )
        return jsonify({"mappings": mappings})


def _add_v1_only(bp: Blueprint) -> None:
    @bp.get("/lookup")
    def lookup_v1() -> Response:
        """GET /_matrix/identity/api/v1/lookup"""
        medium, address = require_str(request.args, "medium", "address")
        answer = services().lookups.lookup_v1(medium, address, may_recurse())
        return jsonify(answer)

    @bp.post("/bulk_lookup")
    def bulk_lookup() -> Response:
        """POST /_matrix/identity/api/v1/bulk_lookup"""
        threepids = json_body().get("threepids")
        if not isinstance(threepids, list) or not all(
            isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t)
            for t in threepids
        ):
            raise InvalidParam("threepids must be a list of [medium, address] pairs")
        pairs = [(m, a) for m, a in threepids]
        found = services().lookups.bulk_lookup(pairs, may_recurse())
        return jsonify({"threepids": found})


def signed_uri() -> str:
    """The request's path and query, as a signing server wrote them."""
    query = request.query_string.decode("ascii", "replace")
    return f"{request.path}?{query}" if query else request.path


def _query(name: str) -> str:
    (value,) = require_str(request.args, name)
    return value
