"""SMTP passwords at rest (R25): sealed per row, bound to the row, re-sealed by the rotation command."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select, update

from leadline_kit.sealing import CredentialError
from leadline_send.credential_rotation import reseal_all
from leadline_send.credentials import CredentialKeys
from leadline_send.models import smtp_account

from .conftest import SMTP_PASSWORD, HarnessFactory, SmtpFactory

OLD = "k1:" + "11" * 32
NEW = "k2:" + "22" * 32


async def test_sealed_bound_to_the_row_and_rotated(send_service: HarnessFactory, smtp_server: SmtpFactory,
                                                   quota_service: None, mailboxes: object) -> None:
    app = await send_service(credential_keys=OLD)
    server = smtp_server(tls="starttls")
    first = await app.add_account(server, name="first")
    second = await app.add_account(server, name="second")
    async with app.db.session() as s:
        rows = {r.id: r for r in (await s.execute(select(smtp_account))).all()}
    one, two = rows[uuid.UUID(first["id"])], rows[uuid.UUID(second["id"])]
    assert SMTP_PASSWORD.encode() not in one.password_sealed and one.key_id == "k1"
    keys = CredentialKeys(OLD)
    assert keys.open(one.password_sealed, "k1", one.company_id, one.id) == SMTP_PASSWORD
    with pytest.raises(CredentialError):  # copied into another row, it does not open
        keys.open(one.password_sealed, "k1", two.company_id, two.id)

    rotated = CredentialKeys(f"{NEW},{OLD}")
    assert await reseal_all(app.db, rotated) == 2
    assert await reseal_all(app.db, rotated) == 0
    async with app.db.session() as s:
        after = (await s.execute(select(smtp_account).where(smtp_account.c.id == one.id))).one()
        await s.execute(update(smtp_account).values(active=True))
    assert after.key_id == "k2"
    assert CredentialKeys(NEW).open(after.password_sealed, "k2", after.company_id, after.id) == SMTP_PASSWORD
