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


async def test_sealed_bound_to_the_row_and_rotated(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
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
    assert (
        CredentialKeys(NEW).open(after.password_sealed, "k2", after.company_id, after.id)
        == SMTP_PASSWORD
    )


async def test_an_account_whose_password_does_not_decrypt_is_in_error_with_the_fix(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service()
    server = smtp_server(tls="starttls")
    account = await app.add_account(server, name="broken")
    assert account["error"] is None
    async with app.db.session() as s:
        sealed = await s.scalar(
            select(smtp_account.c.password_sealed).where(
                smtp_account.c.id == uuid.UUID(account["id"])
            )
        )
        await s.execute(
            update(smtp_account)
            .where(smtp_account.c.id == uuid.UUID(account["id"]))
            .values(password_sealed=sealed[:-1] + bytes([sealed[-1] ^ 1]))
        )
    sessions = len(server.handler.wire)
    sent = await app.user.post(
        "/v1/messages",
        json={"category": "marketing", "to": ["lead@example.org"], "subject": "hi", "text": "x"},
    )
    assert sent.status_code == 422 and sent.json()["type"].endswith("/no-sending-account"), (
        sent.text
    )
    shown = (await app.admin.get(f"/v1/smtp-accounts/{account['id']}")).json()
    assert (
        "cannot be decrypted" in shown["error"]
        and "password" in shown["error"]
        and shown["error_at"]
    )
    tested = await app.admin.post(
        f"/v1/smtp-accounts/{account['id']}/test-email", json={"to": "admin@company.example.com"}
    )
    assert tested.status_code == 422 and tested.json()["type"].endswith("/smtp-account-error"), (
        tested.text
    )
    assert len(server.handler.wire) == sessions
    # entering the password again is the fix: out of error, and confirmed again before it sends
    fixed = await app.admin.patch(
        f"/v1/smtp-accounts/{account['id']}", json={"password": SMTP_PASSWORD}
    )
    assert (
        fixed.status_code == 200
        and fixed.json()["error"] is None
        and fixed.json()["confirmed"] is False
    )
    again = await app.add_account(server, name="after the fix")
    sent = await app.user.post(
        "/v1/messages",
        json={"category": "marketing", "to": ["lead@example.org"], "subject": "hi", "text": "x"},
    )
    assert sent.status_code == 202, sent.text
    assert sent.json()["account"] == f"smtp:{again['id']}"
