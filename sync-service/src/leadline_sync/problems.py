"""The problems sync-service answers with, one class per kind: its ``slug`` is the problem's
``type``."""

from __future__ import annotations

from leadline_kit.errors import BadRequest, Conflict, Forbidden, NotFound, Unprocessable


class SignInRefused(BadRequest):
    slug = "oauth-sign-in-refused"


class AddressSyncedByAnotherUser(Conflict):
    slug = "address-synced-by-another-user"


class MailboxAlreadyConnected(Conflict):
    slug = "mailbox-already-connected"


class OAuthStateOtherUser(Forbidden):
    slug = "oauth-state-other-user"


class MailboxNotConnected(NotFound):
    slug = "mailbox-not-connected"


class ProviderNotFound(NotFound):
    slug = "provider-not-found"


class MailboxLoginFailed(Unprocessable):
    slug = "mailbox-login-failed"


class MailboxSettingsInvalid(Unprocessable):
    slug = "mailbox-settings-invalid"


class OAuthNotConfigured(Unprocessable):
    slug = "oauth-not-configured"


class OAuthIdentityInvalid(SignInRefused):
    slug = "oauth-identity-invalid"


class OAuthProviderError(SignInRefused):
    slug = "oauth-provider-error"


class OAuthProviderUnavailable(SignInRefused):
    slug = "oauth-provider-unavailable"


class OAuthSignInInvalid(SignInRefused):
    slug = "oauth-sign-in-invalid"


class OAuthStateInvalid(SignInRefused):
    slug = "oauth-state-invalid"
