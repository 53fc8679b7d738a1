"""The problems the gateway answers with, one class per kind: its ``slug`` is the problem's
``type``."""

from __future__ import annotations

from leadline_kit.errors import (
    BadRequest,
    Conflict,
    NotFound,
    Problem,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)


class GatewayTimeout(Problem):
    status, slug, title = 504, "upstream-timeout", "Service did not answer in time"


class MailerUnavailable(ServiceUnavailable):
    slug, title = "mailer-unavailable", "The system mailer is not available"


class InvalidPath(BadRequest):
    slug = "invalid-path"


class ApiKeyLimit(Conflict):
    slug = "api-key-limit"


class LastAdministrator(Conflict):
    slug = "last-administrator"


class UserExists(Conflict):
    slug = "user-exists"


class ApiKeyNotFound(NotFound):
    slug = "api-key-not-found"


class CompanyNotFound(NotFound):
    slug = "company-not-found"


class InvitationNotFound(NotFound):
    slug = "invitation-not-found"


class UserNotFound(NotFound):
    slug = "user-not-found"


class RateLimited(TooManyRequests):
    slug = "rate-limited"


class InvalidApiKey(Unauthorized):
    slug = "invalid-api-key"


class InvalidBootstrapToken(Unauthorized):
    slug = "invalid-bootstrap-token"


class InvalidMetricsToken(Unauthorized):
    slug = "invalid-metrics-token"


class InvalidOperatorToken(Unauthorized):
    slug = "invalid-operator-token"


class MissingApiKey(Unauthorized):
    slug = "missing-api-key"


class OperatorApiOff(Unauthorized):
    slug = "operator-api-off"
