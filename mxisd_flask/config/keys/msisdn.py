"""Configuration keys of phone numbers, SMS and notification templates (issue #5)."""

from __future__ import annotations

from typing import Any

TWILIO = "threepid.medium.msisdn.connectors.twilio."
TWILIO_API = "https://api.twilio.com"

# Template paths per event; the email invite and validation keys are core keys.
EVENTS = (
    "invite",
    "session.validation",
    "session.unbind.fraudulent",
    "generic.matrixId",
)

KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    # Which connector sends each medium's messages.
    "threepid.medium.email.connector": ((str,), "smtp"),
    "threepid.medium.msisdn.connector": ((str,), "twilio"),
    # Which generator renders them (mxisd knows only "template").
    "threepid.medium.email.generator": ((str,), "template"),
    "threepid.medium.msisdn.generator": ((str,), "template"),
    # mxisd spells these account_sid/auth_token; ma1sd's docs accountSid/authToken.
    TWILIO + "account_sid": ((str,), None),
    TWILIO + "accountSid": ((str,), None),
    TWILIO + "auth_token": ((str,), None),
    TWILIO + "authToken": ((str,), None),
    TWILIO + "number": ((str,), None),
    TWILIO + "baseUrl": ((str,), TWILIO_API),
    # Who renders and sends each medium's notifications ("raw": the built-in one).
    "notification.handler.email": ((str,), "raw"),
    "notification.handler.msisdn": ((str,), "raw"),
    "threepid.medium.email.generators.template.session.unbind.fraudulent": (
        (str,),
        None,
    ),
    "threepid.medium.email.generators.template.generic.matrixId": ((str,), None),
    "threepid.medium.msisdn.generators.template.placeholder": ((dict,), {}),
    "view.session.onTokenSubmit.expired": ((str,), None),
    # Warn a 3PID's owner when someone unbinds it without proving ownership.
    "session.policy.unbind.fraudulent.sendWarning": ((bool,), True),
}

KEYS.update(
    {
        f"threepid.medium.msisdn.generators.template.{event}": ((str,), None)
        for event in EVENTS
    }
)
