"""What ``mxisd invites`` prints: each stored invite and its resolution.

An admin sees which invites are still waiting for their 3PID, when each
will expire (``invite.expiration.*``), and which were resolved, to whom and
why, with the state of their delivery to the inviting homeserver. Addresses
are shown redacted, as in the logs; tokens and keys are never shown.
"""

from __future__ import annotations

import datetime

from mxisd_flask.model import redact
from mxisd_flask.services.onbind import InviteConfig
from mxisd_flask.storage.db import Database
from mxisd_flask.storage.deliveries import DeliveryStorage, InviteState


def invite_lines(db: Database, config: InviteConfig) -> list[str]:
    with db.read() as cur:
        states = DeliveryStorage().invite_states(cur)
    return [_line(state, config) for state in states]


def _line(state: InviteState, config: InviteConfig) -> str:
    head = (
        f"{_utc(state.created_ts)} room={state.room_id} sender={state.sender} "
        f"to={redact(state.medium, state.address)}"
    )
    found = state.delivery
    if found is None:
        if not config.expiration_enabled:
            return f"{head} unresolved"
        expires = _utc(state.created_ts + config.expiration_after_ms)
        return f"{head} unresolved expires={expires}"
    line = (
        f"{head} resolved={found.reason} mxid={found.mxid} "
        f"delivery={found.state} attempts={found.attempts}"
    )
    if found.last_error:
        line += f" last_error={found.last_error!r}"
    return line


def _utc(ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
