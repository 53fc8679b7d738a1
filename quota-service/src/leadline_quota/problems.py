"""The problems quota-service answers with, one class per kind: its ``slug`` is the problem's
``type``."""

from __future__ import annotations

from leadline_kit.errors import Conflict, NotFound, Unprocessable


class ReservationSettled(Conflict):
    slug = "reservation-settled"


class ReservationNotFound(NotFound):
    slug = "reservation-not-found"


class QuotaLimitUnreachable(Unprocessable):
    slug = "quota-limit-unreachable"


class QuotaRaiseForbidden(Unprocessable):
    slug = "quota-raise-forbidden"


class ReservationCountsInvalid(Unprocessable):
    slug = "reservation-counts-invalid"


class UnknownPlan(Unprocessable):
    slug = "unknown-plan"
