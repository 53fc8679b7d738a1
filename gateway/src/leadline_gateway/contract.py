"""The API contract the merged OpenAPI document declares for every operation, beyond what FastAPI
writes.

Every operation documents its problem responses as ``application/problem+json`` (RFC 9457) with the
problem ``type``\\ s it can return: 400 (a refused path or cursor), 401 and 403 where a key is
needed, 404 where a path names a resource, 409 where it writes, 422 for what the schema or the rules
refuse, 429 where the gateway's rate limit applies (proxied routes), 503 where a service or the
mailer may be away, and 405 with ``Allow``.  A ``201`` or ``202`` of ``POST /x`` links to the
operations on ``/x/{id}`` (and below it) with the body's ``id``, so a stateful client (schemathesis)
can chain create → get → change → delete.  Written as rules over the document rather than per
endpoint, so that a new route cannot be left out.
"""

from __future__ import annotations

import re
from typing import Any

from leadline_kit.errors import PROBLEM_BASE, PROBLEM_JSON

METHODS = ("get", "put", "post", "patch", "delete")
WRITES = ("put", "post", "patch", "delete")
PUBLIC = ("/v1/unsubscribe/", "/v1/invitations/claim")
# reached without a key (the provider's redirect); a key sent with it is authenticated and must be
# the starter's
SIGN_IN_CALLBACK = "/v1/mail-sync/oauth/callback"
_PARAMETER = re.compile(r"\{([^}/]+)\}")

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": (
        "RFC 9457 problem details; `type` is stable, one of the operation's listed types."
    ),
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
    "additionalProperties": True,
}

DESCRIPTIONS = {
    "400": (
        "The path or a parameter is malformed (a dot segment or encoded separator, a cursor not "
        "made here)"
    ),
    "401": (
        "No valid credential: an API key (or the token the route names) is missing, unknown, "
        "revoked or expired"
    ),
    "403": "The caller's role may not do this",
    "404": "Nothing of the caller's company has this id",
    "405": "The path does not take this method; `Allow` lists those it takes",
    "409": "The request conflicts with the current state",
    "422": "The body or a parameter breaks the schema or a rule",
    "429": "Too many requests: wait for `Retry-After` seconds",
    "503": (
        "A service behind the gateway (or the system mailer) is not reachable; retry after "
        "`Retry-After`"
    ),
}
TYPES = {
    "400": ["invalid-path", "invalid-cursor", "bad-request"],
    "401": ["missing-api-key", "invalid-api-key"],
    "403": ["role-forbidden", "forbidden"],
    "404": ["not-found"],
    "405": ["method-not-allowed"],
    "409": ["conflict"],
    "422": ["validation-error"],
    "429": ["rate-limited", "too-many-requests"],
    "503": ["service-unavailable"],
}


def _problem(
    status: str, types: list[str], headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": DESCRIPTIONS[status]
        + ". Types: "
        + ", ".join(f"`{PROBLEM_BASE}{t}`" for t in types),
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        "x-problem-types": [PROBLEM_BASE + t for t in types],
    }
    if headers:
        response["headers"] = headers
    return response


def _statuses(
    path: str, method: str, operation: dict[str, Any], proxied: bool
) -> dict[str, list[str]]:
    public = path.startswith(PUBLIC) or operation.get("security") == []
    statuses = {"400": TYPES["400"], "405": TYPES["405"], "422": TYPES["422"]}
    if not public:
        statuses["401"] = TYPES["401"]
        statuses["403"] = TYPES["403"]
    # a resource named by the path, or one the caller has not made yet
    statuses["404"] = TYPES["404"]
    if method in WRITES:
        statuses["409"] = TYPES["409"]
    if proxied:
        statuses["503"] = TYPES["503"]
        if not public:
            statuses["429"] = TYPES["429"]
    return statuses


def apply_contract(document: dict[str, Any], proxied_prefixes: list[str]) -> dict[str, Any]:
    """Declare problem responses and links on every operation of ``document`` (changed in place)."""
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    paths: dict[str, Any] = document.get("paths", {})
    retry_after = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}
    allow = {"Allow": {"schema": {"type": "string"}, "description": "the methods the path takes"}}
    for path, item in paths.items():
        proxied = any(path == p or path.startswith(p + "/") for p in proxied_prefixes)
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            if path == SIGN_IN_CALLBACK:
                operation["security"] = [{}, {"apiKey": []}]  # a key is optional here
            elif path.startswith(PUBLIC):
                operation["security"] = []  # no key: the document's default does not apply
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for status, types in _statuses(path, method, operation, proxied).items():
                known = responses.get(status, {}).get("x-problem-types", [])
                headers = (
                    allow if status == "405" else retry_after if status in ("429", "503") else None
                )
                declared = _problem(
                    status,
                    sorted({*types, *(t.removeprefix(PROBLEM_BASE) for t in known)}),
                    headers,
                )
                if "description" in responses.get(status, {}) and status not in DESCRIPTIONS:
                    declared["description"] = responses[status]["description"]
                responses[status] = declared
    _link_creations(paths)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document


def _link_creations(paths: dict[str, Any]) -> None:
    """``POST /x`` answering 201 or 202 links to every operation on ``/x/{param}`` and below it."""
    for path, item in paths.items():
        answers = item.get("post", {}).get("responses", {})
        created = answers.get("201") or answers.get("202")
        if created is None:
            continue
        for other, other_item in paths.items():
            below = other[len(path) + 1 :].split("/", 1)[0] if other.startswith(path + "/") else ""
            parameter = _PARAMETER.fullmatch(below)
            if parameter is None:
                continue
            links = created.setdefault("links", {})
            for method in METHODS:
                target = other_item.get(method)
                if target is None or "operationId" not in target:
                    continue
                links[f"{method.capitalize()}{_title(other)}"] = {
                    "operationId": target["operationId"],
                    "parameters": {parameter.group(1): "$response.body#/id"},
                }


def _title(path: str) -> str:
    return "".join(
        part.capitalize() for part in re.split(r"[^a-zA-Z]+", path) if part and part != "v1"
    )
