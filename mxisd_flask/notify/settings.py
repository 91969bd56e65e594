"""The notification section: handlers, connectors, templates per medium."""

from __future__ import annotations

import os
from dataclasses import dataclass

from mxisd_flask.config.keys.msisdn import EVENTS
from mxisd_flask.config.sections import TEMPLATE_DIR, Config
from mxisd_flask.errors import ConfigError

MEDIA = ("email", "msisdn")

# Built-in templates, relative to the template directory.
BUILT_IN = {
    ("email", "invite"): "email/invite.eml",
    ("email", "session.validation"): "email/validation.eml",
    ("email", "session.unbind.fraudulent"): "email/unbind-fraudulent.eml",
    ("email", "generic.matrixId"): "email/matrixid-invite.eml",
    ("msisdn", "invite"): "sms/invite.txt",
    ("msisdn", "session.validation"): "sms/validation.txt",
    ("msisdn", "session.unbind.fraudulent"): "sms/unbind-fraudulent.txt",
    ("msisdn", "generic.matrixId"): "sms/matrixid-invite.txt",
}


@dataclass(frozen=True)
class MediumSettings:
    medium: str
    handler: str
    connector: str
    templates: dict[str, str]  # event -> template file
    placeholders: dict[str, str]


@dataclass(frozen=True)
class NotifySettings:
    media: dict[str, MediumSettings]
    expired_view: str
    send_fraud_warning: bool


def notify_settings(config: Config) -> NotifySettings:
    """Read and check every notification key of ``config``."""
    v = config.values
    media = {medium: _medium(config, medium) for medium in MEDIA}
    return NotifySettings(
        media=media,
        expired_view=_template(
            v["view.session.onTokenSubmit.expired"],
            "view/expired.html",
            config.base_dir,
            "view.session.onTokenSubmit.expired",
        ),
        send_fraud_warning=v["session.policy.unbind.fraudulent.sendWarning"],
    )


def _medium(config: Config, medium: str) -> MediumSettings:
    v = config.values
    prefix = f"threepid.medium.{medium}."
    if v[prefix + "generator"] != "template":
        raise ConfigError(f"{prefix}generator: only template is supported")
    templates = {
        event: _template(
            v[f"{prefix}generators.template.{event}"],
            BUILT_IN[(medium, event)],
            config.base_dir,
            f"{prefix}generators.template.{event}",
        )
        for event in EVENTS
    }
    placeholders = v[prefix + "generators.template.placeholder"]
    if not all(isinstance(val, str) for val in placeholders.values()):
        raise ConfigError(f"{prefix}generators.template.placeholder: values are text")
    return MediumSettings(
        medium=medium,
        handler=v[f"notification.handler.{medium}"],
        connector=v[prefix + "connector"],
        templates=templates,
        placeholders={str(k).upper(): val for k, val in placeholders.items()},
    )


def _template(value: str | None, default: str, base_dir: str, key: str) -> str:
    if value:
        path = os.path.expanduser(value)
        path = path if os.path.isabs(path) else os.path.join(base_dir, path)
    else:
        path = os.path.join(TEMPLATE_DIR, default)
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: template file not found: {path}")
    return path
