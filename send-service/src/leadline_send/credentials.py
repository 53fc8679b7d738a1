"""SMTP account passwords at rest (R25): AES-256-GCM under a per-row data key wrapped by a key-encryption key.

Sealed layout: ``nonce(12) | wrapped data key (32+16) | nonce(12) | ciphertext``.
Both layers bind the company and account ids as associated data, so a sealed
password copied into another row does not open.  The row keeps the id of the
key-encryption key; ``reseal`` re-encrypts under the current key (rotation).
"""

from __future__ import annotations

import os
import uuid

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class CredentialKeys:
    def __init__(self, spec: str) -> None:
        self.keys: dict[str, bytes] = {}
        self.current = ""
        for part in spec.split(","):
            kid, _, hex_key = part.strip().partition(":")
            key = bytes.fromhex(hex_key)
            if not kid or len(key) != 32:
                raise ValueError("credential keys are 'kid:<64 hex digits>'")
            self.keys[kid] = key
            self.current = self.current or kid

    @staticmethod
    def _associated(company_id: uuid.UUID, account_id: uuid.UUID) -> bytes:
        return b"smtp-account:" + company_id.bytes + account_id.bytes

    def seal(self, secret: str, company_id: uuid.UUID, account_id: uuid.UUID) -> tuple[bytes, str]:
        ad = self._associated(company_id, account_id)
        data_key = AESGCM.generate_key(bit_length=256)
        wrap_nonce, nonce = os.urandom(12), os.urandom(12)
        wrapped = AESGCM(self.keys[self.current]).encrypt(wrap_nonce, data_key, ad)
        return wrap_nonce + wrapped + nonce + AESGCM(data_key).encrypt(nonce, secret.encode(), ad), self.current

    def open(self, sealed: bytes, key_id: str, company_id: uuid.UUID, account_id: uuid.UUID) -> str:
        ad = self._associated(company_id, account_id)
        wrap_nonce, wrapped, nonce, body = sealed[:12], sealed[12:60], sealed[60:72], sealed[72:]
        data_key = AESGCM(self.keys[key_id]).decrypt(wrap_nonce, wrapped, ad)
        return AESGCM(data_key).decrypt(nonce, body, ad).decode()
