"""Email normalisation: the quick path for plain addresses must give what
email_validator's full check gives, or a lookup would miss a binding (or an
index entry) stored under the other form."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

import pytest

from mxisd_flask.errors import MatrixError
from mxisd_flask.model import checked_email, normalise_address

quick = functools.partial(normalise_address, "email")


def outcome(normalise: Callable[[str], str], address: str) -> str | None:
    """The normalised address, or None where it is refused."""
    try:
        return normalise(address)
    except MatrixError:
        return None


def test_plain_addresses_skip_the_full_check() -> None:
    checked_email.cache_clear()

    assert quick("John.Doe@Example.ORG") == "john.doe@example.org"
    assert quick("Jörg@Exämple.org") == "jörg@exämple.org"
    assert checked_email.cache_info().misses == 1


ADDRESSES = [
    "John.Doe@Example.ORG",
    "a+b@x.io",
    "a@x.co.uk",
    "a..b@x.org",
    "a@x",
    "a@x.local",
    "a@example.test",
    "a@1.2.3.4",
    "a@[1.2.3.4]",
    '"a b"@x.org',
    "a@x.123",
    "a@-x.org",
    "a@x-.org",
    "a@xn--bad.org",
    "Jörg@Exämple.org",
    "\u212aelvin@example.org",
    " a@x.org",
    "a@x.org.",
    ".a@x.org",
    "a.@x.org",
    "x" * 65 + "@x.org",
    "a@" + "b" * 64 + ".org",
    "a@b_c.org",
    "a@b.c0m",
    "o'brien@example.org",
    "a@b.com",
    "A@B.COM",
    "1@2.org",
    "a@123.org",
]


@pytest.mark.parametrize("address", ADDRESSES)
def test_quick_path_normalises_as_the_full_check_does(address: str) -> None:
    assert outcome(quick, address) == outcome(checked_email, address)


def test_quick_path_agrees_with_the_full_check_on_random_addresses() -> None:
    chars = "aaaaZZZ000._+-'@x"
    rng = random.Random(3)
    parts = ["", "a", "B.c", "x--y", "xn--a", "-a", "a-", "1", "local", "test"]
    parts += ["ORG", "example", "Co.Uk", "mail-1", "com"]
    disagree = []
    for _ in range(3000):
        local = "".join(rng.choice(chars) for _ in range(rng.randint(0, 6)))
        labels = [rng.choice(parts) for _ in range(rng.randint(1, 3))]
        address = f"{local}@{'.'.join(labels)}"
        if outcome(quick, address) != outcome(checked_email, address):
            disagree.append(address)

    assert disagree == []


# RFC 5890 reserves labels with "--" in their third and fourth places for
# IDNA ("xn--"); email_validator refuses the others ("ab--cd"), which the
# quick path took as plain DNS labels.
RESERVED_HYPHEN_LABELS = [
    "a@ab--cd.com",
    "A@AB--CD.COM",
    "a@mail.ab--cd.org",
    "a@ab---c.org",
    "a@1q--3.org",
    "a@ab--.org",
]


@pytest.mark.parametrize("address", RESERVED_HYPHEN_LABELS)
def test_quick_path_refuses_reserved_hyphen_labels_as_the_full_check_does(
    address: str,
) -> None:
    assert outcome(checked_email, address) is None
    assert outcome(quick, address) is None


def test_quick_path_agrees_on_random_labels_with_hyphens() -> None:
    rng = random.Random(5)
    label_chars = "ab1-"
    disagree = []
    for _ in range(3000):
        labels = [
            "".join(rng.choice(label_chars) for _ in range(rng.randint(1, 6)))
            for _ in range(rng.randint(1, 3))
        ]
        address = f"user@{'.'.join(labels)}.org"
        if outcome(quick, address) != outcome(checked_email, address):
            disagree.append(address)

    assert disagree == []
