"""Value types shared by every layer."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import phonenumbers
from email_validator import (
    SPECIAL_USE_DOMAIN_NAMES,
    EmailNotValidError,
    validate_email,
)

from mxisd_flask.errors import InvalidAddress, InvalidEmail, InvalidParam

# Each pattern ends in \Z, not $: $ also matches before a final newline, which
# let "@a:b\n" through into storage, mail headers and Location.
MXID_RE = re.compile(r"^@[^:\s]+:[A-Za-z0-9.\-\[\]:]+\Z")
CLIENT_SECRET_RE = re.compile(r"^[0-9a-zA-Z.=_\-]{1,255}\Z")
# Room versions 12 and later drop the ":domain" part (spec 1.16, appendices).
ROOM_ID_RE = re.compile(r"^![^\s:]+(?::[A-Za-z0-9.\-\[\]:]+)?\Z")
SERVER_NAME_RE = re.compile(
    r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(?::([0-9]{1,5}))?\Z"
)
URL_CHARS_RE = re.compile(r"^[!-~]+\Z")  # printable ASCII, no spaces or controls
# A strict subset of RFC 5322 dot-atoms (64 characters at most) over a DNS
# name with an alphabetic top-level label that is not a special-use one and
# no label with "--" in its third and fourth places (IDNA's "xn--", which
# email_validator converts, and the other ones RFC 5890 reserves, which it
# refuses): what email_validator accepts and only lower-cases.
_PLAIN_EMAIL = re.compile(
    r"(?!.*xn--)(?=[^@]{1,64}@)"
    r"[a-z0-9_+\-]+(?:\.[a-z0-9_+\-]+)*"
    r"@(?:(?!..--)[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.)+"
    rf"(?!(?:{'|'.join(map(re.escape, SPECIAL_USE_DOMAIN_NAMES))})\Z)[a-z]{{2,63}}"
)


@dataclass(frozen=True)
class ThreePid:
    medium: str
    address: str


def normalise_address(medium: str, address: str) -> str:
    """Canonical form of an address, used before any lookup or storage.

    Emails compare case-insensitively (users type them in any case); msisdn
    are E.164 digits without the leading '+'.
    """
    if medium == "email":
        return normalise_email(address)
    if medium == "msisdn":
        digits = re.sub(r"[\s().\-]", "", address).lstrip("+")
        # isdigit() alone takes "²" and other scripts' digits too.
        if not (digits.isascii() and digits.isdigit()):
            raise InvalidAddress("Phone number must be digits in E.164 form")
        return digits
    return address


def parse_msisdn(country: str, phone_number: str) -> str:
    """A phone number as a user typed it, with the client's ISO 3166-1
    alpha-2 country for national forms, as E.164 digits without the '+'.

    The result is what ``normalise_address("msisdn", ...)`` keeps, so stores
    and sessions compare the same strings.
    """
    if len(phone_number) > 64 or not re.fullmatch(r"[A-Za-z]{2}", country):
        raise InvalidAddress("Invalid country or phone number")
    try:
        parsed = phonenumbers.parse(phone_number, country.upper())
    except phonenumbers.NumberParseException as exc:
        raise InvalidAddress("Invalid phone number") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidAddress("Invalid phone number")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return normalise_address("msisdn", e164)


def normalise_email(address: str) -> str:
    """Checked, lower-cased email.

    email_validator's check costs about 35 us, as much as the rest of a v1
    lookup, so plain ASCII addresses it is known to accept unchanged but
    for case take a quick path (one regular expression); the others go
    through it.
    """
    if isinstance(address, str) and address.isascii() and len(address) <= 254:
        lowered = address.lower()
        if _PLAIN_EMAIL.fullmatch(lowered):
            return lowered
    return checked_email(address)


@functools.lru_cache(maxsize=65536)
def checked_email(address: str) -> str:
    """``address`` as email_validator accepts it, lower-cased; cached because
    lookups repeat addresses."""
    if not isinstance(address, str) or len(address) > 254:
        raise InvalidEmail("Invalid email address")
    try:
        checked = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidEmail("Invalid email address") from exc
    return str(checked.normalized).lower()


def check_client_secret(client_secret: object) -> str:
    if not isinstance(client_secret, str) or not CLIENT_SECRET_RE.match(client_secret):
        raise InvalidParam("Invalid client_secret")
    return client_secret


def check_mxid(mxid: object, field: str = "mxid") -> str:
    if not isinstance(mxid, str) or not MXID_RE.match(mxid) or len(mxid) > 255:
        raise InvalidParam(f"Invalid {field}")
    return mxid


def check_room_id(room_id: str) -> str:
    if len(room_id) > 255 or not ROOM_ID_RE.match(room_id):
        raise InvalidParam("Invalid room_id")
    return room_id


def check_server_name(server_name: str) -> str:
    """A Matrix server name: DNS name, IPv4 or [IPv6], optional port."""
    match = SERVER_NAME_RE.match(server_name)
    port = match.group(1) if match else None
    if not match or len(server_name) > 255 or (port and not 0 < int(port) < 65536):
        raise InvalidParam("Invalid matrix_server_name")
    return server_name


def check_next_link(next_link: str | None) -> str | None:
    """A next_link we can store and later put in a Location header."""
    if next_link is None:
        return None
    if len(next_link) > 2048 or not URL_CHARS_RE.match(next_link):
        raise InvalidParam("Invalid next_link")
    return next_link


def redact(medium: str, address: str) -> str:
    """A 3PID for logs at info and above: enough to correlate, not to read."""
    if medium == "email" and "@" in address:
        local, _, domain = address.rpartition("@")
        return f"email:{local[:1]}***@{domain}"
    return f"{medium}:{'*' * max(len(address) - 4, 0)}{address[-4:]}"
