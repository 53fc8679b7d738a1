"""One error type per service, mapped to RFC 9457 ``application/problem+json``.

Raise a :class:`Problem` subclass anywhere below an endpoint; the handlers
installed by :func:`install_problem_handlers` turn it (and FastAPI's own
validation and routing errors) into a problem document with a stable ``type``.
An unexpected exception becomes a 500 problem without internals, and is logged.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

PROBLEM_BASE = "https://leadline.dev/problems/"
PROBLEM_JSON = "application/problem+json"

log = logging.getLogger("leadline.errors")
BUSY_RETRY_AFTER_SECONDS = 5


class Problem(Exception):
    status: int = 400
    slug: str = "bad-request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str = "",
        *,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if slug:
            self.slug = slug
        self.headers = headers or {}
        self.extra = extra

    def to_dict(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update({k: _jsonable(v) for k, v in self.extra.items()})
        return body


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return value


class BadRequest(Problem):
    status, slug, title = 400, "bad-request", "Bad request"


class Unauthorized(Problem):
    status, slug, title = 401, "unauthorized", "Unauthorized"


class Forbidden(Problem):
    status, slug, title = 403, "forbidden", "Forbidden"


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(Problem):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(Problem):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class Unprocessable(Problem):
    status, slug, title = 422, "validation-error", "Invalid request"


class TooManyRequests(Problem):
    status, slug, title = 429, "too-many-requests", "Too many requests"


class ServiceUnavailable(Problem):
    status, slug, title = 503, "service-unavailable", "Service unavailable"


class InternalError(Problem):
    status, slug, title = 500, "internal-error", "Internal error"


# Problems of more than one service, each raised by name (a service's own are in its problems.py).


class IdentityMissing(Unauthorized):
    slug = "identity-missing"


class IdentityInvalid(Unauthorized):
    slug = "identity-invalid"


class IdentityExpired(Unauthorized):
    slug = "identity-expired"


class RoleForbidden(Forbidden):
    slug = "role-forbidden"


class OperatorOnly(Forbidden):
    slug = "operator-only"


class OperatorNotTenant(Forbidden):
    slug = "operator-not-tenant"


class InvalidCursor(BadRequest):
    slug = "invalid-cursor"


class InvalidEmailAddress(Unprocessable):
    slug = "invalid-address"


class QuotaExceeded(TooManyRequests):
    slug = "quota-exceeded"


class Busy(ServiceUnavailable):
    slug = "busy"


def problem_response(problem: Problem, instance: str | None = None) -> JSONResponse:
    return JSONResponse(
        problem.to_dict(instance),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers,
    )


HTTP_METHODS = ("GET", "PUT", "POST", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    """Every method the app takes on the request's path item (Starlette's own 405 names only the
    first route that matched the path, when one path has a route per method).

    The path item is the most concrete template of the app's OpenAPI document that matches, as
    OpenAPI reads paths: ``/v1/messages/batch`` is its own item, not an instance of
    ``/v1/messages/{message_id}``, so that item's GET is not advertised for it. A path outside the
    document (``/readyz``) is answered from the routes themselves."""
    path = request.url.path
    items = [
        (template, operations)
        for template, operations in request.app.openapi().get("paths", {}).items()
        if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), path)
    ]
    if items:
        _, operations = min(items, key=lambda item: item[0].count("{"))
        return [method for method in HTTP_METHODS if method.lower() in operations]
    allowed = []
    for method in HTTP_METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def install_problem_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(exc, request.url.path)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "loc": list(e.get("loc", ())),
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
        return problem_response(
            Unprocessable(detail or "invalid request", errors=errors), request.url.path
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        problem = Problem(
            str(exc.detail),
            slug={404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error"),
            headers=headers,
        )
        problem.status = exc.status_code
        problem.title = str(exc.detail)
        return problem_response(problem, request.url.path)

    async def on_pool_timeout(request: Request, exc: Exception) -> JSONResponse:
        # every database connection of this process is in use: the service is busy, not broken (R28)
        log.warning(
            "no database connection free for %s %s: answered 503", request.method, request.url.path
        )
        problem = Busy(
            "the service is busy (every database connection is in use); try again shortly",
            headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
        )
        return problem_response(problem, request.url.path)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            InternalError("an unexpected error occurred; it has been logged"), request.url.path
        )

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(PoolTimeout, on_pool_timeout)
    app.add_exception_handler(Exception, on_unexpected)
