"""Key rotation for SMTP account passwords (R25): re-seal every row under the current key.

Put the new key first in ``LEADLINE_CREDENTIAL_KEYS`` (keep the old ones after
it so existing rows still open), run
``python -m leadline_send.credential_rotation``, then drop the old keys.
Rows are re-sealed in batches, each row locked while it changes, so the
command can run while the service sends.
"""

from __future__ import annotations

import asyncio

from leadline_kit.db import Database
from leadline_send.accounts import repository
from leadline_send.config import Settings
from leadline_send.credentials import CredentialKeys


async def reseal_all(db: Database, keys: CredentialKeys, batch: int = 200) -> int:
    """Re-seal every password not yet under the current key; returns how many rows changed."""
    changed = 0
    while True:
        async with db.session() as session:
            rows = await repository.sealed_under_older_keys(session, keys.current, batch)
            for row in rows:
                secret = keys.open(row.password_sealed, row.key_id, row.company_id, row.id)
                sealed, key_id = keys.seal(secret, row.company_id, row.id)
                await repository.update_account(
                    session, row.company_id, row.id, password_sealed=sealed, key_id=key_id
                )
        changed += len(rows)
        if len(rows) < batch:
            return changed


async def main() -> None:
    settings = Settings()
    db = Database(settings.database_url, "send")
    try:
        changed = await reseal_all(db, CredentialKeys(settings.credential_keys.get_secret_value()))
    finally:
        await db.dispose()
    print(f"re-sealed {changed} SMTP account passwords")


if __name__ == "__main__":
    asyncio.run(main())
