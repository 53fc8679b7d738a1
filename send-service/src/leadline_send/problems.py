"""The problems send-service answers with, one class per kind: its ``slug`` is the problem's
``type``."""

from __future__ import annotations

from leadline_kit.errors import (
    Conflict,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unprocessable,
)


class AccountInError(Unprocessable):
    slug = "smtp-account-error"


class NotResendable(Conflict):
    slug = "not-resendable"


class MessageNotFound(NotFound):
    slug = "message-not-found"


class SmtpAccountNotFound(NotFound):
    slug = "smtp-account-not-found"


class UnsubscribeLinkInvalid(NotFound):
    slug = "unsubscribe-link-invalid"


class MessageTooLarge(PayloadTooLarge):
    slug = "message-too-large"


class LeadServiceUnavailable(ServiceUnavailable):
    slug = "lead-service-unavailable"


class SyncedMailboxUnavailable(ServiceUnavailable):
    slug = "mailbox-unavailable"


class HeaderInjection(Unprocessable):
    slug = "header-injection"


class HeaderMismatch(Unprocessable):
    slug = "header-mismatch"


class IdempotencyKeyReused(Unprocessable):
    slug = "idempotency-key-reused"


class InvalidAttachment(Unprocessable):
    slug = "invalid-attachment"


class InvalidBody(Unprocessable):
    slug = "invalid-body"


class InvalidFingerprint(Unprocessable):
    slug = "invalid-fingerprint"


class InvalidIdempotencyKey(Unprocessable):
    slug = "invalid-idempotency-key"


class InvalidUrl(Unprocessable):
    slug = "invalid-url"


class MarketingOneRecipient(Unprocessable):
    slug = "marketing-one-recipient"


class NoRecipients(Unprocessable):
    slug = "no-recipients"


class NoSendingAccount(Unprocessable):
    slug = "no-sending-account"


class PlaintextNotAllowed(Unprocessable):
    slug = "plaintext-not-allowed"


class QuotaLimit(Unprocessable):
    slug = "quota-limit"


class SmtpTestFailed(Unprocessable):
    slug = "smtp-test-failed"


class TooManyRecipients(Unprocessable):
    slug = "too-many-recipients"


class UnknownLead(Unprocessable):
    slug = "unknown-lead"


class UnsupportedAddress(Unprocessable):
    slug = "unsupported-address"


class WrongConfirmationCode(Unprocessable):
    slug = "wrong-confirmation-code"
