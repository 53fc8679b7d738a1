"""The servers the project starts itself behave as the tests and `make run` rely on."""

from __future__ import annotations

import imaplib
import uuid

from leadline_kit.infra import DovecotServer
from leadline_kit.testing.delivery import deliver_locally


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


def test_mail_delivered_to_a_dovecot_user_reaches_an_open_session_and_only_that_inbox(
    dovecot: DovecotServer,
) -> None:
    me, other = (f"deliver-{uuid.uuid4().hex[:8]}@example.com" for _ in range(2))
    for name in (me, other):
        dovecot.add_user(name, "pw")
    imap = imaplib.IMAP4("127.0.0.1", dovecot.port)
    imap.login(me, "pw")
    imap.select("INBOX")
    raw = (
        b"From: a@example.com\r\nTo: "
        + me.encode()
        + b"\r\nSubject: delivered\r\nX-Token: t-1\r\n\r\nhi\r\n"
    )
    assert deliver_locally(dovecot, [me, "stranger@example.com"], raw) == [me]
    imap.noop()
    _, found = imap.uid("SEARCH", "HEADER", "X-Token", "t-1")
    assert len(found[0].split()) == 1
    _, data = imap.uid("FETCH", found[0], "(BODY.PEEK[])")
    assert data[0][1] == raw
    imap.logout()
    imap = imaplib.IMAP4("127.0.0.1", dovecot.port)
    imap.login(other, "pw")
    assert imap.select("INBOX")[1] == [b"0"]
    imap.logout()


def test_mail_filled_into_folders_is_there_whole_seen_and_numbered_in_the_order_given(
    dovecot: DovecotServer,
) -> None:
    me = f"fill-{uuid.uuid4().hex[:8]}@example.com"
    dovecot.add_user(me, "pw")
    raws = {
        folder: [
            f"From: a@example.com\r\nSubject: {folder} {i}\r\n\r\nhi\r\n".encode()
            for i in range(40)
        ]
        for folder in ("INBOX", "Sent")
    }
    for folder, messages in raws.items():
        dovecot.fill(me, folder, messages)
    imap = imaplib.IMAP4("127.0.0.1", dovecot.port)
    imap.login(me, "pw")
    for folder, messages in raws.items():
        imap.select(folder, readonly=True)
        _, data = imap.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
        fetched = [part for part in data if isinstance(part, tuple)]
        assert [body for _, body in fetched] == messages
        assert all(b"\\Seen" in head for head, _ in fetched)
    imap.logout()
