"""Key rotation for SMTP account passwords (R25): re-seal every row under the current key.

Put the new key first in ``LEADLINE_CREDENTIAL_KEYS`` (keep the old ones after
it so existing rows still open), run
``python -m leadline_send.credential_rotation``, then drop the old keys.
Rows are re-sealed in batches, each row locked while it changes, so the
command can run while the service sends.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select, update

from leadline_kit.db import Database
from leadline_send.config import Settings
from leadline_send.credentials import CredentialKeys
from leadline_send.models import smtp_account


async def reseal_all(db: Database, keys: CredentialKeys, batch: int = 200) -> int:
    """Re-seal every password not yet under the current key; returns how many rows changed."""
    changed = 0
    while True:
        async with db.session() as session:
            rows = (
                await session.execute(
                    # unscoped: key rotation is an operator command over every company's rows
                    select(
                        smtp_account.c.id,
                        smtp_account.c.company_id,
                        smtp_account.c.password_sealed,
                        smtp_account.c.key_id,
                    )
                    .where(smtp_account.c.password_sealed.is_not(None), smtp_account.c.key_id != keys.current)
                    .limit(batch)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for row in rows:
                secret = keys.open(row.password_sealed, row.key_id, row.company_id, row.id)
                sealed, key_id = keys.seal(secret, row.company_id, row.id)
                await session.execute(
                    # unscoped: by the id of a row the rotation just read and locked
                    update(smtp_account)
                    .where(smtp_account.c.id == row.id)
                    .values(password_sealed=sealed, key_id=key_id)
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
