"""Address normalisation: the form leads are matched on (R23)."""

from __future__ import annotations

import pytest

from leadline_mail.addresses import address_domain, normalize_address, normalize_addresses


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Jane@Example.ORG", "jane@example.org"),
        (" <bob@example.com> ", "bob@example.com"),
        ("jürgen@müller.de", "jürgen@xn--mller-kva.de"),
        ("user@xn--mller-kva.de", "user@xn--mller-kva.de"),
        ("alice@example.org@evil.example", None),
        ("Alice <alice@example.org>", None),
        ("no-at-sign", None),
        ("a@localhost", None),
        ("a b@example.com", None),
        ("x@[127.0.0.1]", None),
        ("a\x00@example.com", None),
        ("", None),
        ("a" * 400 + "@example.com", None),
    ],
)
def test_normalize_address(value: str, expected: str | None) -> None:
    assert normalize_address(value) == expected


def test_a_leads_addresses_are_normalised_first_first_each_once() -> None:
    raw = ["Ann@Example.org", "not an address", "<ann@example.org>", "ann@work.example", ""]
    assert normalize_addresses(raw) == ["ann@example.org", "ann@work.example"]


def test_address_domain() -> None:
    assert address_domain("jane@Example.org") == "example.org"
    assert address_domain("nothing") == ""
