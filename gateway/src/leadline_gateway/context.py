"""What the gateway's endpoints reach through ``Runtime.context``."""

from __future__ import annotations

from dataclasses import dataclass

from leadline_gateway.auth import ApiKeyAuthenticator
from leadline_gateway.mailer import SystemMailer


@dataclass(frozen=True)
class GatewayContext:
    authenticator: ApiKeyAuthenticator
    mailer: SystemMailer
