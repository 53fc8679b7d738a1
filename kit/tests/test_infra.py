"""The servers the project starts itself behave as the tests and `make run` rely on."""

from __future__ import annotations

import imaplib
import uuid

from leadline_kit.infra import DovecotServer


def test_dovecot_users_added_in_quick_succession_can_all_log_in(dovecot: DovecotServer) -> None:
    users = [(f"quick-{uuid.uuid4().hex[:8]}@example.com", f"pw-{i}") for i in range(4)]
    for name, password in users:
        dovecot.add_user(name, password)
        imap = imaplib.IMAP4("127.0.0.1", dovecot.port)
        imap.login(name, password)
        imap.logout()
    name, _ = users[0]
    dovecot.set_password(name, "changed")
    imap = imaplib.IMAP4("127.0.0.1", dovecot.port)
    try:
        imap.login(name, "pw-0")
        raise AssertionError("the old password still worked")
    except imaplib.IMAP4.error:
        pass
    imap.login(name, "changed")
    imap.logout()
