"""A local OAuth2 authorization server for tests: the outside world Gmail and Microsoft stand for.

It implements what Leadline uses of Google's and Microsoft's identity
platforms, behind the same interface (form-encoded POSTs, JSON answers, the
same error codes):

- ``GET /authorize``: the consent screen of the account the test "signed in"
  with (:meth:`FakeOAuthProvider.sign_in`), answered by a redirect to the
  ``redirect_uri`` with ``code`` and ``state`` (or ``error=access_denied``).
  PKCE is required with S256 (RFC 7636).
- ``POST /token``: ``authorization_code`` (client secret, redirect URI and
  ``code_verifier`` checked; a code works once) and ``refresh_token`` grants;
  answers ``invalid_grant`` for a revoked or unknown refresh token, and can be
  told to answer 503 a number of times.  The ID token carries ``email``,
  ``email_verified``, ``aud``, ``iss``, ``exp`` and the ``nonce``.
- ``GET /userinfo``: the account's ``email`` for a valid access token.
- ``POST /introspect`` (RFC 7662): what Dovecot's ``oauth2`` passdb asks.
- ``POST /revoke``: revokes a refresh token and its access tokens.

Microsoft's identity platform (v2.0) is served beside it, under
``/{tenant}/oauth2/v2.0/authorize`` and ``/{tenant}/oauth2/v2.0/token``
(:meth:`FakeOAuthProvider.microsoft_endpoints`), as Microsoft differs:

- the tenant in the path: ``common``, ``organizations`` or the account's
  directory id (``tenant_id``); another directory's id is refused;
- a refresh token only with ``offline_access``, and scopes of one resource
  only (``invalid_scope`` otherwise, as AADSTS70011);
- the ID token names the account by ``preferred_username`` with ``tid``, and
  ``iss`` is ``…/{tid}/v2.0``; no ``email_verified``, no userinfo endpoint;
- every refresh answers with a new refresh token, and the one used dies
  (stricter than Microsoft, which keeps it a while: the client must store the
  newest).

It runs in a thread of its own (uvicorn), so that a Dovecot started before any
test's event loop can reach it; its state is plain dictionaries under a lock.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from leadline_kit.infra import free_port, wait_for_port


async def smtp_xoauth2(server: Any, args: list[str], owner: Callable[[str], str | None]) -> Any:
    """An aiosmtpd handler's ``auth_XOAUTH2``: the token's ``owner`` must be the user the client
    names.

    Refused as Gmail does: a 334 challenge carrying a base64 JSON error, then 535 once the client
    answers.
    """
    from aiosmtpd.smtp import AuthResult

    blob = args[1].encode() if len(args) > 1 else await server.challenge_auth("")
    if not isinstance(blob, bytes):
        return AuthResult(success=False, handled=True)
    fields = dict(
        part.split("=", 1) for part in base64.b64decode(blob).decode().split("\x01") if "=" in part
    )
    user, token = fields.get("user", ""), fields.get("auth", "").removeprefix("Bearer ")
    if not user or owner(token) != user:
        await server.challenge_auth(
            base64.b64encode(b'{"status":"401","schemes":"bearer"}'), encode_to_b64=False
        )
        return AuthResult(success=False)
    return AuthResult(success=True, auth_data=user)


# the directory of personal accounts
MICROSOFT_PERSONAL_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"


@dataclass
class Grant:
    address: str
    client_id: str
    scope: str
    revoked: bool = False
    tenant: str | None = None  # Microsoft-shaped: the account's directory (tid)


@dataclass
class AccessToken:
    grant: Grant
    expires_at: float


@dataclass
class FakeOAuthProvider:
    client_id: str = "leadline-test-client"
    client_secret: str = field(default_factory=lambda: "secret-" + secrets.token_hex(8))
    port: int = field(default_factory=free_port)
    expires_in: int = 3600  # lifetime of new access tokens, seconds
    signed_in: str | None = None  # the account the next /authorize consents as
    deny: bool = False  # the next /authorize answers error=access_denied
    unavailable_refreshes: int = 0  # so many refresh grants answer 503 first
    refresh_delay: float = 0.0
    # refresh grants wait, unanswered, until this is set
    hold_refreshes: threading.Event | None = None
    refresh_grants: int = 0  # refresh_token grants answered with a new token
    code_grants: int = 0
    # the Microsoft directory of the accounts signing in
    tenant_id: str = "4f0a1c9e-5d2b-4e8a-9b1f-3c6d7e8f9a0b"
    _codes: dict[str, dict[str, str]] = field(default_factory=dict)
    _all_codes: list[str] = field(default_factory=list)
    _refresh: dict[str, Grant] = field(default_factory=dict)
    _access: dict[str, AccessToken] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return self.url

    def endpoints(self) -> dict[str, str]:
        """The endpoint settings of a provider app pointed at this server."""
        return {
            "authorization_url": f"{self.url}/authorize",
            "token_url": f"{self.url}/token",
            "userinfo_url": f"{self.url}/userinfo",
            "issuer": self.issuer,
        }

    def microsoft_endpoints(self) -> dict[str, str]:
        """Microsoft-shaped endpoint settings; ``{tenant}`` and ``{tid}`` are filled in by the app's
        settings."""
        return {
            "authorization_url": f"{self.url}/{{tenant}}/oauth2/v2.0/authorize",
            "token_url": f"{self.url}/{{tenant}}/oauth2/v2.0/token",
            "issuer": f"{self.url}/{{tid}}/v2.0",
        }

    def live_refresh_tokens(self, address: str) -> set[str]:
        with self._lock:
            return {
                token
                for token, grant in self._refresh.items()
                if grant.address == address and not grant.revoked
            }

    def sign_in(self, address: str) -> None:
        self.signed_in, self.deny = address, False

    def revoke_all(self, address: str) -> None:
        """The user withdraws consent (or changes the password): every token of the account dies."""
        with self._lock:
            for grant in self._refresh.values():
                if grant.address == address:
                    grant.revoked = True

    def expire_access_tokens(self, address: str) -> None:
        with self._lock:
            for token in self._access.values():
                if token.grant.address == address:
                    token.expires_at = 0

    def access_token_for(self, address: str) -> str:
        """A live access token of ``address``, as if it had signed in."""
        with self._lock:
            return str(self._issue(Grant(address, self.client_id, "mail"))["access_token"])

    def access_token_valid(self, token: str) -> str | None:
        """The address an access token belongs to, if it is live."""
        with self._lock:
            entry = self._access.get(token)
            if entry is None or entry.expires_at < time.time() or entry.grant.revoked:
                return None
            return entry.grant.address

    def issued_tokens(self) -> list[str]:
        """Every refresh and access token issued so far (for secrets probes)."""
        with self._lock:
            return [*self._refresh, *self._access]

    def issued_codes(self) -> list[str]:
        """Every authorization code handed out so far (for secrets probes)."""
        with self._lock:
            return list(self._all_codes)

    # -- the server ------------------------------------------------------------------------

    def start(self) -> FakeOAuthProvider:
        config = uvicorn.Config(
            self._app(),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-oauth", daemon=True)
        self._thread.start()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def _issue(self, grant: Grant, refresh_token: str | None = None) -> dict[str, Any]:
        access = "ya29.fake-" + secrets.token_urlsafe(24)
        self._access[access] = AccessToken(grant, time.time() + self.expires_in)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": grant.scope,
        }
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        return body

    def _id_token(self, grant: Grant, nonce: str) -> str:
        def part(value: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": self.client_id,
            "sub": hashlib.sha256(grant.address.encode()).hexdigest(),
            "iat": now,
            "exp": now + 3600,
            "nonce": nonce,
        }
        if grant.tenant is None:
            claims.update(iss=self.issuer, email=grant.address, email_verified=True)
        else:
            # Microsoft: the sign-in name, the directory; email only as an optional, unverified
            # claim
            claims.update(
                iss=f"{self.url}/{grant.tenant}/v2.0",
                tid=grant.tenant,
                oid=str(uuid.uuid5(uuid.NAMESPACE_URL, grant.address)),
                preferred_username=grant.address,
                name=grant.address.split("@")[0],
                ver="2.0",
            )
        signing_input = part({"alg": "HS256", "typ": "JWT"}) + "." + part(claims)
        signature = hmac.new(
            self.client_secret.encode(), signing_input.encode(), hashlib.sha256
        ).digest()
        return signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()

    def _app(self) -> FastAPI:  # noqa: C901 - 26, older than the limit
        app = FastAPI()

        def error(code: str, status: int = 400) -> JSONResponse:
            return JSONResponse({"error": code}, status_code=status)

        async def form(request: Request) -> dict[str, str]:
            if (
                request.headers.get("content-type", "").split(";")[0]
                != "application/x-www-form-urlencoded"
            ):
                return {}
            return dict(urllib.parse.parse_qsl((await request.body()).decode()))

        def authorize(
            request: Request,
            client_id: str,
            redirect_uri: str,
            state: str,
            code_challenge: str,
            scope: str,
            code_challenge_method: str = "plain",
            nonce: str = "",
            response_type: Annotated[str, Query()] = "",
        ) -> Response:
            tenant = request.path_params.get("tenant")  # Microsoft-shaped; None: Google-shaped
            if (
                client_id != self.client_id
                or response_type != "code"
                or code_challenge_method != "S256"
            ):
                return error("invalid_request")
            scopes = scope.split()
            resources = {
                s.rsplit("/", 1)[0]
                for s in scopes
                if s not in ("openid", "email", "profile", "offline_access")
            }
            if self.deny or self.signed_in is None:
                query = {"error": "access_denied", "state": state}
            elif tenant is not None and tenant not in ("common", "organizations", self.tenant_id):
                query = {
                    "error": "invalid_request",
                    "error_description": "AADSTS50020: user not in tenant",
                }
            elif tenant is not None and len(resources) > 1:
                query = {
                    "error": "invalid_scope",
                    "error_description": "AADSTS70011: scopes of several resources",
                }
            else:
                code = secrets.token_urlsafe(16)
                with self._lock:
                    self._all_codes.append(code)
                    self._codes[code] = {
                        "address": self.signed_in,
                        "redirect_uri": redirect_uri,
                        "scope": scope,
                        "challenge": code_challenge,
                        "nonce": nonce,
                        "path_tenant": tenant or "",
                    }
                query = {"code": code, "state": state}
            return RedirectResponse(
                redirect_uri + "?" + urllib.parse.urlencode(query), status_code=302
            )

        async def token(request: Request) -> JSONResponse:
            tenant = request.path_params.get("tenant")
            fields = await form(request)
            grant_type, client_id = fields.get("grant_type", ""), fields.get("client_id", "")
            client_secret, code = fields.get("client_secret", ""), fields.get("code", "")
            redirect_uri, code_verifier = (
                fields.get("redirect_uri", ""),
                fields.get("code_verifier", ""),
            )
            refresh_token = fields.get("refresh_token", "")
            if client_id != self.client_id or not hmac.compare_digest(
                client_secret, self.client_secret
            ):
                return error("invalid_client", 401)
            if grant_type == "authorization_code":
                with self._lock:
                    entry = self._codes.pop(code, None)
                    challenge = (
                        base64.urlsafe_b64encode(hashlib.sha256(code_verifier.encode()).digest())
                        .rstrip(b"=")
                        .decode()
                    )
                    if (
                        entry is None
                        or entry["redirect_uri"] != redirect_uri
                        or challenge != entry["challenge"]
                        or entry["path_tenant"] != (tenant or "")
                    ):
                        return error("invalid_grant")
                    grant = Grant(
                        entry["address"],
                        client_id,
                        entry["scope"],
                        tenant=None if tenant is None else self.tenant_id,
                    )
                    # Microsoft gives a refresh token only with offline_access; Google with
                    # access_type=offline, which Leadline always asks (not checked here)
                    refresh = None
                    if tenant is None or "offline_access" in grant.scope.split():
                        refresh = "1//fake-refresh-" + secrets.token_urlsafe(24)
                        self._refresh[refresh] = grant
                    body = self._issue(grant, refresh)
                    self.code_grants += 1
                body["id_token"] = self._id_token(grant, entry["nonce"])
                return JSONResponse(body)
            if grant_type == "refresh_token":
                if self.refresh_delay:
                    await asyncio.sleep(self.refresh_delay)
                if self.hold_refreshes is not None:
                    await asyncio.to_thread(self.hold_refreshes.wait, 30)
                with self._lock:
                    if self.unavailable_refreshes > 0:
                        self.unavailable_refreshes -= 1
                        return error("temporarily_unavailable", 503)
                    grant_or_none = self._refresh.get(refresh_token)
                    if (
                        grant_or_none is None
                        or grant_or_none.revoked
                        or (grant_or_none.tenant is None) != (tenant is None)
                    ):
                        return JSONResponse(
                            {
                                "error": "invalid_grant",
                                "error_description": "Token has been expired or revoked.",
                            },
                            status_code=400,
                        )
                    self.refresh_grants += 1
                    if tenant is None:
                        return JSONResponse(self._issue(grant_or_none))
                    # Microsoft: a new refresh token each time; here the one used dies at once
                    rotated = "M.fake-refresh-" + secrets.token_urlsafe(24)
                    self._refresh[rotated] = Grant(
                        grant_or_none.address,
                        grant_or_none.client_id,
                        grant_or_none.scope,
                        tenant=grant_or_none.tenant,
                    )
                    grant_or_none.revoked = True
                    return JSONResponse(self._issue(self._refresh[rotated], rotated))
            return error("unsupported_grant_type")

        for path in ("", "/{tenant}/oauth2/v2.0"):
            app.add_api_route(f"{path}/authorize", authorize, methods=["GET"])
            app.add_api_route(f"{path}/token", token, methods=["POST"])

        @app.get("/userinfo")
        def userinfo(authorization: Annotated[str, Header()] = "") -> JSONResponse:
            address = self.access_token_valid(authorization.removeprefix("Bearer ").strip())
            if address is None:
                return error("invalid_token", 401)
            return JSONResponse({"email": address, "email_verified": True})

        @app.post("/introspect")
        async def introspect(request: Request) -> JSONResponse:
            address = self.access_token_valid((await form(request)).get("token", ""))
            if address is None:
                return JSONResponse({"active": False})
            return JSONResponse({"active": True, "email": address, "client_id": self.client_id})

        @app.post("/revoke")
        async def revoke(request: Request) -> Response:
            with self._lock:
                grant = self._refresh.get((await form(request)).get("token", ""))
                if grant is not None:
                    grant.revoked = True
            return Response(status_code=200)

        return app
