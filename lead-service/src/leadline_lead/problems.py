"""The problems lead-service answers with, one class per kind: its ``slug`` is the problem's
``type``."""

from __future__ import annotations

from leadline_kit.errors import Conflict, NotFound, Unprocessable


class AddressTaken(Conflict):
    slug = "address-taken"


class AlreadyBlocklisted(Conflict):
    slug = "already-blocklisted"


class BlocklistEntryNotFound(NotFound):
    slug = "blocklist-entry-not-found"


class LeadNotFound(NotFound):
    slug = "lead-not-found"


class InvalidDateRange(Unprocessable):
    slug = "invalid-date-range"


class InvalidDomain(Unprocessable):
    slug = "invalid-domain"


class UnknownOwner(Unprocessable):
    slug = "unknown-owner"
