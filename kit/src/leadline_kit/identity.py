"""The caller's identity, passed from the gateway to the services in a signed header.

The gateway authenticates the API key and sends ``X-Leadline-Identity`` (base64url
JSON: company, user, role, key id, issued-at) and ``X-Leadline-Signature``
(HMAC-SHA256 of that value with the shared identity secret).  A service
refuses (401) a request without a valid, fresh signature, so reaching a service
directly never bypasses the gateway.

The operator (who runs Leadline, not a tenant) has an identity of its own: the
gateway signs role ``operator`` for a request under ``/v1/operator/`` that
carries the operator token, and for nothing else.  ``operator`` is no tenant
role (users' roles are constrained to :data:`ROLES`), so no API key can hold
it; tenant endpoints (:data:`Caller`) refuse it, operator endpoints
(:data:`Operator`) accept nothing else, and take the company they act on from
the path.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from leadline_kit.errors import (
    IdentityExpired,
    IdentityInvalid,
    IdentityMissing,
    OperatorNotTenant,
    OperatorOnly,
    RoleForbidden,
)

Role = Literal[
    "administrator",
    "company_manager",
    "marketing_manager",
    "sales_manager",
    "salesperson",
    "jr_salesperson",
]
ROLES: tuple[str, ...] = get_args(Role)
IDENTITY_HEADER = "x-leadline-identity"
SIGNATURE_HEADER = "x-leadline-signature"
MAX_AGE_SECONDS = 300
OPERATOR_ROLE = "operator"
# the operator belongs to no company and is no user
OPERATOR_SUBJECT = uuid.UUID(int=0)


@dataclass(frozen=True)
class Identity:
    company_id: uuid.UUID
    user_id: uuid.UUID
    role: str
    api_key_id: uuid.UUID | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "administrator"

    @property
    def is_operator(self) -> bool:
        return self.role == OPERATOR_ROLE


OPERATOR = Identity(company_id=OPERATOR_SUBJECT, user_id=OPERATOR_SUBJECT, role=OPERATOR_ROLE)


def _sign(value: str, secret: str) -> str:
    return hmac.new(secret.encode(), value.encode(), hashlib.sha256).hexdigest()


def identity_headers(identity: Identity, secret: str, now: float | None = None) -> dict[str, str]:
    claims = {
        "c": str(identity.company_id),
        "u": str(identity.user_id),
        "r": identity.role,
        "k": str(identity.api_key_id) if identity.api_key_id else None,
        "t": int(now if now is not None else time.time()),
    }
    value = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).decode()
    return {IDENTITY_HEADER: value, SIGNATURE_HEADER: _sign(value, secret)}


def verify_identity(
    value: str | None, signature: str | None, secret: str, now: float | None = None
) -> Identity:
    if not value or not signature:
        raise IdentityMissing("requests must come through the gateway")
    if not hmac.compare_digest(_sign(value, secret), signature):
        raise IdentityInvalid("identity signature is invalid")
    try:
        claims = json.loads(base64.urlsafe_b64decode(value.encode()))
        issued = int(claims["t"])
        identity = Identity(
            company_id=uuid.UUID(claims["c"]),
            user_id=uuid.UUID(claims["u"]),
            role=str(claims["r"]),
            api_key_id=uuid.UUID(claims["k"]) if claims.get("k") else None,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise IdentityInvalid("identity header is malformed") from exc
    if abs((now if now is not None else time.time()) - issued) > MAX_AGE_SECONDS:
        raise IdentityExpired("identity header has expired")
    if identity.role not in ROLES and identity != OPERATOR:
        raise IdentityInvalid("identity names an unknown role")
    return identity


def _signed_identity(request: Request) -> Identity:
    secret: str = request.app.state.runtime.settings.identity_secret.get_secret_value()
    return verify_identity(
        request.headers.get(IDENTITY_HEADER), request.headers.get(SIGNATURE_HEADER), secret
    )


async def current_identity(request: Request) -> Identity:
    identity = _signed_identity(request)
    if identity.is_operator:
        raise OperatorNotTenant("the operator acts on a company through /v1/operator/ only")
    return identity


async def current_operator(request: Request) -> Identity:
    identity = _signed_identity(request)
    if not identity.is_operator:
        raise OperatorOnly("only the operator may do this (the operator token, not an API key)")
    return identity


Caller = Annotated[Identity, Depends(current_identity)]
Operator = Annotated[Identity, Depends(current_operator)]


async def administrator(caller: Caller) -> Identity:
    if not caller.is_admin:
        raise RoleForbidden("only administrators may do this")
    return caller


Admin = Annotated[Identity, Depends(administrator)]


ROLES_EXTENSION = "x-leadline-roles"


def declare_roles(
    app: FastAPI, administrator_checks: Sequence[Callable[..., Any]] = (administrator,)
) -> None:
    """Write into each operation of ``app``'s OpenAPI document the roles that may call it
    (``x-leadline-roles``), when one of ``administrator_checks`` guards it: the generated role sweep
    (tests/test_api_contract.py) reads it, so a new administrators-only route is swept without a
    list."""

    def guarded(dependant: Dependant) -> bool:
        return any(d.call in administrator_checks or guarded(d) for d in dependant.dependencies)

    def mark(routes: Sequence[Any]) -> None:
        for route in routes:
            # FastAPI >= 0.16x includes routers lazily
            included = getattr(route, "original_router", None)
            if included is not None:
                mark(included.routes)
            elif isinstance(route, APIRoute) and guarded(route.dependant):
                route.openapi_extra = {
                    **(route.openapi_extra or {}),
                    ROLES_EXTENSION: ["administrator"],
                }

    mark(app.routes)
