"""Mailbox credentials at rest (R25): envelope encryption with AES-256-GCM.

Each mailbox row holds its passwords encrypted under a fresh random data key;
the data key is stored wrapped (AES-256-GCM) by a key-encryption key (KEK) from
the settings, named by ``credential_key_id``.  Both encryptions bind the
company and mailbox ids as associated data, so a ciphertext copied into
another row fails to decrypt instead of handing one user's password to
another.  Rotating the KEK: put the new key first in
``LEADLINE_SYNC_CREDENTIAL_KEYS`` (keep the old one after it) and run
``python -m leadline_sync.credentials rotate``, which re-encrypts every row
under a new data key and the current KEK; then drop the old key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import uuid
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select, update

from leadline_kit.db import Database
from leadline_sync.config import Settings
from leadline_sync.models import mailbox

log = logging.getLogger("leadline.sync.credentials")

NONCE_BYTES = 12


@dataclass(frozen=True)
class MailboxSecrets:
    imap_password: str
    smtp_password: str

    def __repr__(self) -> str:  # never let a password reach a log line through repr
        return "MailboxSecrets(***)"


@dataclass(frozen=True)
class SealedSecrets:
    key_id: str
    wrapped_key: bytes
    ciphertext: bytes


class CredentialError(Exception):
    """Stored credentials cannot be decrypted (unknown key id, or tampered / moved ciphertext)."""


class CredentialCipher:
    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("at least one key-encryption key is needed")
        self.current_key_id = keys[0][0]
        self._keks = {key_id: AESGCM(key) for key_id, key in keys}

    @classmethod
    def from_settings(cls, settings: Settings) -> CredentialCipher:
        return cls(settings.credential_keys())

    @staticmethod
    def _associated(company_id: uuid.UUID, mailbox_id: uuid.UUID) -> bytes:
        return f"leadline-sync-credentials:{company_id}:{mailbox_id}".encode()

    def seal(self, company_id: uuid.UUID, mailbox_id: uuid.UUID, secrets: MailboxSecrets) -> SealedSecrets:
        associated = self._associated(company_id, mailbox_id)
        data_key = AESGCM.generate_key(bit_length=256)
        key_nonce, nonce = os.urandom(NONCE_BYTES), os.urandom(NONCE_BYTES)
        wrapped = key_nonce + self._keks[self.current_key_id].encrypt(key_nonce, data_key, associated)
        plaintext = json.dumps({"imap": secrets.imap_password, "smtp": secrets.smtp_password}).encode()
        ciphertext = nonce + AESGCM(data_key).encrypt(nonce, plaintext, associated)
        return SealedSecrets(self.current_key_id, wrapped, ciphertext)

    def open(self, company_id: uuid.UUID, mailbox_id: uuid.UUID, sealed: SealedSecrets) -> MailboxSecrets:
        kek = self._keks.get(sealed.key_id)
        if kek is None:
            raise CredentialError(f"credential key {sealed.key_id!r} is not configured")
        associated = self._associated(company_id, mailbox_id)
        try:
            data_key = kek.decrypt(sealed.wrapped_key[:NONCE_BYTES], sealed.wrapped_key[NONCE_BYTES:], associated)
            plaintext = AESGCM(data_key).decrypt(sealed.ciphertext[:NONCE_BYTES], sealed.ciphertext[NONCE_BYTES:],
                                                 associated)
        except InvalidTag:
            raise CredentialError("credentials do not decrypt for this mailbox") from None
        values = json.loads(plaintext)
        return MailboxSecrets(imap_password=str(values["imap"]), smtp_password=str(values["smtp"]))


async def rotate(database: Database, cipher: CredentialCipher, batch_size: int = 200) -> int:
    """Re-encrypt every stored credential under a new data key and the current KEK; returns the row count."""
    rotated = 0
    while True:
        async with database.session() as session:
            rows = (
                await session.execute(
                    select(mailbox.c.id, mailbox.c.company_id, mailbox.c.credential_key_id,
                           mailbox.c.credential_wrapped_key, mailbox.c.credential_ciphertext)
                    .where(mailbox.c.credential_ciphertext.is_not(None),
                           mailbox.c.credential_key_id != cipher.current_key_id)
                    .limit(batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return rotated
            for row in rows:
                secrets = cipher.open(row.company_id, row.id, SealedSecrets(
                    row.credential_key_id, row.credential_wrapped_key, row.credential_ciphertext))
                sealed = cipher.seal(row.company_id, row.id, secrets)
                await session.execute(
                    update(mailbox).where(mailbox.c.id == row.id).values(
                        credential_key_id=sealed.key_id, credential_wrapped_key=sealed.wrapped_key,
                        credential_ciphertext=sealed.ciphertext)
                )
            rotated += len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m leadline_sync.credentials",
                                     description="Re-encrypt mailbox credentials under the current key (R25).")
    parser.add_argument("action", choices=["rotate"])
    parser.parse_args()
    settings = Settings()
    cipher = CredentialCipher.from_settings(settings)

    async def run() -> int:
        database = Database(settings.database_url, "sync", pool_size=2)
        try:
            return await rotate(database, cipher)
        finally:
            await database.dispose()

    count = asyncio.run(run())
    print(f"re-encrypted {count} mailbox credential(s) under key {cipher.current_key_id!r}")


if __name__ == "__main__":
    main()
