"""SMTP account passwords at rest (R25), sealed with the kit's envelope encryption.

Stored as one column: the wrapped data key then the ciphertext
(``nonce(12) | wrapped data key (32+16) | nonce(12) | ciphertext``), with the
KEK's id in its own column.  Both layers bind the company and account ids as
associated data, so a sealed password copied into another row does not open;
``python -m leadline_send.credential_rotation`` re-seals under the current key.
"""

from __future__ import annotations

import uuid

from leadline_kit.sealing import WRAPPED_KEY_BYTES, KeyRing, Sealed, parse_keys


class CredentialKeys:
    def __init__(self, spec: str) -> None:
        self._ring = KeyRing(parse_keys(spec, "LEADLINE_CREDENTIAL_KEYS"))
        self.current = self._ring.current_key_id

    @staticmethod
    def _associated(company_id: uuid.UUID, account_id: uuid.UUID) -> bytes:
        return b"smtp-account:" + company_id.bytes + account_id.bytes

    def seal(self, secret: str, company_id: uuid.UUID, account_id: uuid.UUID) -> tuple[bytes, str]:
        sealed = self._ring.seal(secret.encode(), self._associated(company_id, account_id))
        return sealed.wrapped_key + sealed.ciphertext, sealed.key_id

    def open(self, sealed: bytes, key_id: str, company_id: uuid.UUID, account_id: uuid.UUID) -> str:
        """The password; :class:`~leadline_kit.sealing.CredentialError` if it does not open for this
        row."""
        parts = Sealed(key_id, sealed[:WRAPPED_KEY_BYTES], sealed[WRAPPED_KEY_BYTES:])
        return self._ring.open(parts, self._associated(company_id, account_id)).decode()
