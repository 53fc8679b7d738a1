"""Mailbox credentials at rest (R25), sealed with the kit's envelope encryption.

Each mailbox row holds its passwords (IMAP and SMTP, as one JSON document;
for a mailbox signed in with OAuth2 the refresh and access tokens instead)
encrypted under a fresh random data key, stored wrapped by the key-encryption
key named in ``credential_key_id`` (see :mod:`leadline_kit.sealing`).  Both
layers bind the company and mailbox ids, so a ciphertext copied into another
row fails to decrypt instead of handing one user's password to another.
Rotating the KEK: put the new key first in ``LEADLINE_SYNC_CREDENTIAL_KEYS``
(keep the old one after it) and run ``python -m leadline_sync.credentials
rotate``, which re-encrypts every row under a new data key and the current KEK;
then drop the old key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row

from leadline_kit.db import Database
from leadline_kit.sealing import KeyRing, Sealed
from leadline_sync.config import Settings
from leadline_sync.logins import ServerLogin
from leadline_sync.mailbox import repository

log = logging.getLogger("leadline.sync.credentials")


@dataclass(frozen=True)
class MailboxSecrets:
    imap_password: str
    smtp_password: str
    # a mailbox signed in with OAuth2 has no passwords but the provider's refresh token and the
    # current access token (both used for IMAP and SMTP)
    refresh_token: str = ""
    access_token: str = ""

    def __repr__(self) -> str:  # never let a password reach a log line through repr
        return "MailboxSecrets(***)"


class CredentialCipher:
    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        self._ring = KeyRing(keys)
        self.current_key_id = self._ring.current_key_id

    @classmethod
    def from_settings(cls, settings: Settings) -> CredentialCipher:
        return cls(settings.credential_keys())

    @staticmethod
    def _associated(company_id: uuid.UUID, mailbox_id: uuid.UUID) -> bytes:
        return f"leadline-sync-credentials:{company_id}:{mailbox_id}".encode()

    def seal(self, company_id: uuid.UUID, mailbox_id: uuid.UUID, secrets: MailboxSecrets) -> Sealed:
        document = {"imap": secrets.imap_password, "smtp": secrets.smtp_password}
        if secrets.refresh_token:
            document.update(refresh=secrets.refresh_token, access=secrets.access_token)
        plaintext = json.dumps(document).encode()
        return self._ring.seal(plaintext, self._associated(company_id, mailbox_id))

    def open(self, company_id: uuid.UUID, mailbox_id: uuid.UUID, sealed: Sealed) -> MailboxSecrets:
        """The passwords; :class:`~leadline_kit.sealing.CredentialError` if they do not open for
        this row."""
        values = json.loads(self._ring.open(sealed, self._associated(company_id, mailbox_id)))
        return MailboxSecrets(
            imap_password=str(values["imap"]),
            smtp_password=str(values["smtp"]),
            refresh_token=str(values.get("refresh", "")),
            access_token=str(values.get("access", "")),
        )

    def imap_login(self, row: Row[Any]) -> ServerLogin:
        """The IMAP login of a mailbox row; :class:`~leadline_kit.sealing.CredentialError` if it
        does not open."""
        sealed = Sealed(
            row.credential_key_id, row.credential_wrapped_key, row.credential_ciphertext
        )
        secrets = self.open(row.company_id, row.id, sealed)
        return ServerLogin(
            row.imap_host,
            row.imap_port,
            row.imap_tls,
            row.imap_username,
            secrets.imap_password,
            row.imap_pinned_sha256,
        )


async def rotate(database: Database, cipher: CredentialCipher, batch_size: int = 200) -> int:
    """Re-encrypt every stored credential under a new data key and the current KEK; returns the row
    count."""
    rotated = 0
    while True:
        async with database.session() as session:
            rows = await repository.sealed_under_older_keys(
                session, cipher.current_key_id, batch_size
            )
            if not rows:
                return rotated
            for row in rows:
                secrets = cipher.open(
                    row.company_id,
                    row.id,
                    Sealed(
                        row.credential_key_id, row.credential_wrapped_key, row.credential_ciphertext
                    ),
                )
                sealed = cipher.seal(row.company_id, row.id, secrets)
                await repository.reseal(
                    session,
                    row.company_id,
                    row.id,
                    sealed.key_id,
                    sealed.wrapped_key,
                    sealed.ciphertext,
                )
            rotated += len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m leadline_sync.credentials",
        description="Re-encrypt mailbox credentials under the current key (R25).",
    )
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
