"""The IMAP client against a real Dovecot: security of the connection, then the commands sync and send use."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from leadline_kit.infra import DovecotServer
from leadline_mail.imap import ImapSettings, connect_imap
from leadline_mail.net import MailConnectionError

from .conftest import LOOPBACK, leaf_sha256, maildir_deliver, sample_message

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted(serve: Script) -> AsyncIterator[int]:
    """A loopback server playing the outside world's part as ``serve`` scripts it; yields its port."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


SCRIPTED_LOGIN = ImapSettings(
    host="127.0.0.1",
    port=0,
    tls="plain",
    username="u",
    password="p",
    allow_plaintext=True,
    allow_networks=LOOPBACK,
    timeout=5,
)

Settings = Callable[..., ImapSettings]


# --- connecting ----------------------------------------------------------------------------


async def test_implicit_tls_with_cafile_logs_in(imap_settings: Settings) -> None:
    async with await connect_imap(imap_settings()) as client:
        assert "IDLE" in client.capabilities
        assert "STARTTLS" not in client.capabilities
        status = await client.select("INBOX")
        assert status.exists == 0 and status.uidvalidity > 0


async def test_starttls_on_the_plain_port(imap_settings: Settings, dovecot: DovecotServer) -> None:
    async with await connect_imap(imap_settings(port=dovecot.port, tls="starttls")) as client:
        # capabilities were asked again after the handshake and login
        assert "STARTTLS" not in client.capabilities and "LOGINDISABLED" not in client.capabilities
        assert "UIDPLUS" in client.capabilities
        assert (await client.select("INBOX")).exists == 0


async def test_non_ascii_password_is_sent_as_a_literal(
    imap_settings: Settings, dovecot: DovecotServer, mail_user: str
) -> None:
    import time

    dovecot.set_password(mail_user, "pässwörd ✓")
    time.sleep(1.1)  # Dovecot re-reads its passwd-file at most once a second
    async with await connect_imap(imap_settings(password="pässwörd ✓")) as client:
        # without LITERAL+ the client must wait for the server's "+" before sending a literal
        client.capabilities = client.capabilities - {"LITERAL+"}
        uid = await client.append("INBOX", sample_message(1))
        assert uid == 1
        assert (await client.select("INBOX")).exists == 1


async def test_wrong_password_is_auth_failed(imap_settings: Settings) -> None:
    with pytest.raises(MailConnectionError) as caught:
        await connect_imap(imap_settings(password="wrong"))
    assert caught.value.kind == "auth_failed"
    assert "password" in caught.value.user_message


async def test_right_pin_connects_without_a_ca(
    imap_settings: Settings, dovecot: DovecotServer
) -> None:
    pin = leaf_sha256(dovecot)
    async with await connect_imap(imap_settings(cafile=None, pinned_sha256=pin)) as client:
        assert (await client.select("INBOX")).uidvalidity > 0
    starttls = imap_settings(
        cafile=None, pinned_sha256=pin.upper(), port=dovecot.port, tls="starttls"
    )
    async with await connect_imap(starttls) as client:
        assert (await client.select("INBOX")).uidvalidity > 0


async def test_wrong_pin_is_a_tls_error(imap_settings: Settings, dovecot: DovecotServer) -> None:
    for tls, port in (("implicit", dovecot.tls_port), ("starttls", dovecot.port)):
        with pytest.raises(MailConnectionError) as caught:
            await connect_imap(
                imap_settings(cafile=None, pinned_sha256="00" * 32, tls=tls, port=port)
            )
        assert caught.value.kind == "tls"


async def test_self_signed_without_pin_or_cafile_is_a_tls_error(
    imap_settings: Settings, dovecot: DovecotServer
) -> None:
    for tls, port in (("implicit", dovecot.tls_port), ("starttls", dovecot.port)):
        with pytest.raises(MailConnectionError) as caught:
            await connect_imap(imap_settings(cafile=None, tls=tls, port=port))
        assert caught.value.kind == "tls"
        assert "self-signed" in caught.value.user_message


async def test_plain_refused_unless_the_operator_allows_it(
    imap_settings: Settings, dovecot: DovecotServer
) -> None:
    with pytest.raises(MailConnectionError) as caught:
        await connect_imap(imap_settings(tls="plain", port=dovecot.port))
    assert caught.value.kind == "not_allowed"
    async with await connect_imap(
        imap_settings(tls="plain", port=dovecot.port, allow_plaintext=True)
    ) as client:
        assert (await client.select("INBOX")).exists == 0


async def test_loopback_refused_without_the_allow_list(imap_settings: Settings) -> None:
    with pytest.raises(MailConnectionError) as caught:
        await connect_imap(imap_settings(allow_networks=()))
    assert "resolved to" in caught.value.detail and "public" in caught.value.user_message


async def test_closed_port_is_unreachable(imap_settings: Settings) -> None:
    from leadline_kit.infra import free_port

    with pytest.raises(MailConnectionError) as caught:
        await connect_imap(imap_settings(port=free_port()))
    assert caught.value.kind == "unreachable"


async def test_silent_server_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1000)
        writer.close()

    async with scripted(silent) as port:
        with pytest.raises(MailConnectionError) as caught:
            await connect_imap(replace(SCRIPTED_LOGIN, port=port, timeout=0.5))
        assert caught.value.kind == "timeout"


async def test_server_trickling_data_forever_hits_the_command_limit() -> None:
    async def trickling(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
        await reader.readline()
        with contextlib.suppress(ConnectionError):
            while not reader.at_eof():
                writer.write(b"* OK still working\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
        writer.close()

    async with scripted(trickling) as port:
        started = asyncio.get_running_loop().time()
        with pytest.raises(MailConnectionError) as caught:
            await connect_imap(replace(SCRIPTED_LOGIN, port=port, timeout=0.4, command_limit=1.0))
        assert caught.value.kind == "timeout"
        assert asyncio.get_running_loop().time() - started < 3


async def test_starttls_injection_is_refused() -> None:
    """A server (or a man in the middle) that sends data right behind the STARTTLS OK is refused."""

    async def injecting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
        line = await reader.readline()
        tag = line.split(b" ")[0]
        writer.write(tag + b" OK Begin TLS\r\n* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n")
        await writer.drain()
        await reader.read(1000)  # until the client gives up
        writer.close()

    async with scripted(injecting) as port:
        with pytest.raises(MailConnectionError) as caught:
            await connect_imap(
                replace(SCRIPTED_LOGIN, port=port, tls="starttls", allow_plaintext=False, timeout=3)
            )
        assert caught.value.kind == "tls"
        assert "unexpected data" in caught.value.user_message


# --- arguments ------------------------------------------------------------------------------


async def test_cr_lf_nul_arguments_refused_before_sending(imap_settings: Settings) -> None:
    async with await connect_imap(imap_settings()) as client:
        for bad in ("INBOX\r\nA1 DELETE INBOX", "x\ny", "nul\x00"):
            with pytest.raises(ValueError):
                await client.select(bad)
            with pytest.raises(ValueError):
                await client.create_folder(bad)
            with pytest.raises(ValueError):
                await client.append("INBOX", sample_message(1), flags=[f"\\Seen {bad}"])
        with pytest.raises(ValueError):
            await client.append("INBOX", b"Subject: x\r\n\r\nnul \x00 byte\r\n")
        # the connection is still in step after the refusals
        assert (await client.select("INBOX")).exists == 0
    with pytest.raises(MailConnectionError) as caught:
        await connect_imap(imap_settings(password="pw\r\nA2 LOGOUT"))
    assert caught.value.kind == "auth_failed"


async def test_folder_names_with_quotes_and_unicode(imap_settings: Settings) -> None:
    async with await connect_imap(imap_settings()) as client:
        names = ['Leads "hot" \\ list', "Envoyés & Co", "Отправленные"]
        for name in names:
            await client.create_folder(name)
        listed = {f.name for f in await client.list_folders()}
        assert set(names) <= listed
        uid = await client.append(names[1], sample_message(1))
        assert uid == 1
        assert (await client.select(names[1])).exists == 1
        await client.select(
            "INBOX"
        )  # Dovecot disconnects a client whose selected folder is deleted
        for name in names:
            await client.delete_folder(name)
        assert not set(names) & {f.name for f in await client.list_folders()}


# --- commands -----------------------------------------------------------------------------


async def test_append_uids_from_fetch_round_trip_byte_exact(imap_settings: Settings) -> None:
    raw = (
        sample_message(7, size=3000)
        + "Ünïcode body line\r\n".encode()
        + b"{5}\r\nnot a literal\r\n"
    )
    when = datetime(2026, 11, 20, 8, 30, 15, tzinfo=UTC)
    async with await connect_imap(imap_settings()) as client:
        first = await client.append("INBOX", raw, when=when)
        second = await client.append("INBOX", sample_message(8), flags=())
        assert first is not None and second == first + 1
        status = await client.select("INBOX")
        assert status.exists == 2 and status.uidnext == second + 1
        assert await client.uids_from(1) == [first, second]
        assert await client.uids_from(second) == [second]
        # n:* with n above the highest UID must not return the last message
        assert await client.uids_from(status.uidnext) == []
        [message] = await client.fetch_messages([first])
        assert message.raw == raw
        assert message.internaldate == when
        [header] = await client.fetch_headers([first])
        assert header.header == raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        assert header.size == len(raw) and header.internaldate == when
        assert await client.fetch_headers([second + 100]) == []
        [fields] = await client.fetch_headers([first], ["subject", "From", "X-Absent"])
        lines = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        wanted = [line for line in lines if line.lower().startswith((b"from:", b"subject:"))]
        assert fields.header == b"\r\n".join(wanted) + b"\r\n\r\n", (
            "only those fields, in the message's order"
        )
        assert fields.size == len(raw) and fields.internaldate == when
        with pytest.raises(ValueError, match="header field name"):
            await client.fetch_headers([first], ["Subject: x"])
        # servers without ESEARCH answer "* SEARCH 1 2"
        client.capabilities = client.capabilities - {"ESEARCH"}
        assert await client.uids_from(1) == [first, second]
        assert await client.uids_from(status.uidnext) == []


async def test_append_many_stores_every_message_in_one_command_with_multiappend(
    imap_settings: Settings,
) -> None:
    when = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
    messages = [(sample_message(n, size=2000), when) for n in range(3)]
    async with await connect_imap(imap_settings()) as client:
        assert "MULTIAPPEND" in client.capabilities
        tag = client._tag
        await client.append_many("INBOX", messages)
        assert client._tag == tag + 1  # one APPEND command for the three (RFC 3502)
        client.capabilities = client.capabilities - {"MULTIAPPEND"}
        await client.append_many("INBOX", messages[:2])  # without it: one APPEND each
        assert client._tag == tag + 3
        status = await client.select("INBOX")
        assert status.exists == 5
        fetched = await client.fetch_messages(await client.uids_from(1))
        assert [m.raw for m in fetched] == [raw for raw, _ in messages] + [
            raw for raw, _ in messages[:2]
        ]
        assert {m.internaldate for m in fetched} == {when}


async def test_fetch_of_1500_headers_in_one_command(
    imap_settings: Settings, dovecot: DovecotServer, mail_user: str
) -> None:
    count = 1500
    async with await connect_imap(imap_settings(header_batch=5000)) as client:
        await client.select("INBOX")  # creates the Maildir
        maildir_deliver(dovecot, mail_user, [sample_message(i) for i in range(count)])
        status = await client.select("INBOX")
        assert status.exists == count
        uids = await client.uids_from(1)
        assert len(uids) == count
        headers = await asyncio.wait_for(client.fetch_headers(uids), 30)
        assert [h.uid for h in headers] == uids
        assert all(b"Subject: message " in h.header for h in headers)
        messages = await client.fetch_messages(uids[:300])
        assert len(messages) == 300 and all(m.raw.startswith(b"From: Lead") for m in messages)


async def test_search_by_header_and_expunge_only_those_uids(imap_settings: Settings) -> None:
    async with await connect_imap(imap_settings()) as client:
        flagged = await client.append(
            "INBOX", sample_message(0), flags=("\\Deleted",)
        )  # the user's, not ours
        ours = await client.append(
            "INBOX", b'X-Proof: tok-"1\r\nSubject: ours\r\n\r\nx\r\n', flags=()
        )
        other = await client.append(
            "INBOX", b"X-Proof: tok-2\r\nSubject: theirs\r\n\r\nx\r\n", flags=()
        )
        assert (
            flagged is not None and ours is not None and other is not None
        )  # UIDPLUS gives the UIDs
        await client.select("INBOX", readonly=False)
        assert await client.uids_with_header("X-Proof", 'tok-"1') == [ours]
        assert await client.uids_with_header("X-Proof", "") == sorted([ours, other])
        assert await client.uids_with_header("X-Proof", "", from_uid=other) == [other]
        assert (
            await client.uids_with_header("X-Proof", "tok-2", from_uid=other + 1) == []
        )  # not "the highest"
        assert await client.expunge([ours]) is True
        assert await client.uids_from(1) == sorted(
            [flagged, other]
        )  # the user's \Deleted mail is still there


async def test_find_sync_folders_by_special_use(imap_settings: Settings) -> None:
    async with await connect_imap(imap_settings()) as client:
        await client.create_folder("Sent Items")  # a common name that must lose against \Sent
        await client.create_folder("INBOX/Sent")  # a subfolder named Sent: ignored
        assert await client.find_sync_folders() == {"inbox": "INBOX", "sent": "Sent"}


def _listing(list_lines: bytes) -> Script:
    """A provider without SPECIAL-USE (Courier, older Gmail): LOGIN and LIST answered from a script."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] fake\r\n")
        while line := await reader.readline():
            tag, _, rest = line.partition(b" ")
            command = rest.split(b" ", 1)[0].strip().upper()
            if command == b"LIST":
                writer.write(list_lines)
            elif command == b"LOGOUT":
                writer.write(b"* BYE bye\r\n")
            writer.write(tag + b" OK done\r\n")
            await writer.drain()
        writer.close()

    return serve


@pytest.mark.parametrize(
    "reply",
    [
        b"{tag} NO [ALERT] Too many simultaneous connections. (Failure)\r\n",
        b"* BYE [ALERT] Too many simultaneous connections. (Failure)\r\n",
    ],
    ids=["tagged-no", "bye"],
)
async def test_gmail_refusing_more_connections_is_not_a_wrong_password(reply: bytes) -> None:
    """Gmail's answers (scripted: Gmail is the outside world); Dovecot's ``NO [LIMIT]`` is tested in sync."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake\r\n")
        while line := await reader.readline():
            tag = line.partition(b" ")[0]
            writer.write(reply.replace(b"{tag}", tag))
            await writer.drain()
            if reply.startswith(b"*"):
                break
        writer.close()

    async with scripted(serve) as port:
        with pytest.raises(MailConnectionError) as caught:
            await connect_imap(replace(SCRIPTED_LOGIN, port=port))
        assert caught.value.kind == "too_many_connections"


async def test_hostile_fetch_responses() -> None:
    """Unbalanced parentheses, an oversized literal, unsolicited and foreign FETCH responses, then BYE."""
    big = b"X" * 5000

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] fake\r\n")
        while line := await reader.readline():
            tag, _, rest = line.partition(b" ")
            if rest.startswith(b"UID FETCH"):
                writer.write(
                    b'* 1 FETCH (UID 1 INTERNALDATE "garbage" BODY[] {%d}\r\n' % len(big)
                    + big
                    + b")\r\n"
                    b"* 2 FETCH (FLAGS (\\Seen)\r\n"  # unsolicited, unbalanced
                    b"* 3 FETCH (UID 99 BODY[] {3}\r\nabc)\r\n"  # a UID nobody asked for
                    b"* 4 FETCH (UID 4 BODY[] NIL)\r\n"
                    b"* 5 FETCH ((((((((((((((((((((((((((((((((((((((((\r\n"
                    + tag
                    + b" OK done\r\n"
                )
            elif rest.startswith(b"NOOP"):
                writer.write(b"* BYE shutting down for maintenance\r\n")
                await writer.drain()
                break
            else:
                writer.write(tag + b" OK done\r\n")
            await writer.drain()
        writer.close()

    async with scripted(serve) as port:
        client = await connect_imap(replace(SCRIPTED_LOGIN, port=port, max_literal_bytes=1000))
        messages = await client.fetch_messages([1, 4])
        assert [(m.uid, len(m.raw), m.truncated, m.internaldate) for m in messages] == [
            (1, 1000, True, None),
            (4, 0, False, None),
        ]
        with pytest.raises(MailConnectionError) as caught:
            await client.noop()
        assert caught.value.kind == "unreachable" and "maintenance" in caught.value.user_message
        assert client.closed


@pytest.mark.parametrize(
    ("list_lines", "expected"),
    [
        (
            b'* LIST (\\HasNoChildren) "/" INBOX\r\n* LIST (\\HasNoChildren) "/" Drafts\r\n'
            b'* LIST (\\HasNoChildren) "/" {10}\r\nSent Items\r\n',
            "Sent Items",
        ),
        (
            b'* LIST (\\HasChildren) "/" "INBOX"\r\n* LIST (\\Noselect \\HasChildren) "/" "[Gmail]"\r\n'
            b'* LIST (\\HasNoChildren) "/" "[Gmail]/All Mail"\r\n* LIST (\\HasNoChildren) "/" "[Gmail]/Sent Mail"\r\n',
            "[Gmail]/Sent Mail",
        ),
        (
            b'* LIST (\\Unmarked \\HasChildren) "." "INBOX"\r\n* LIST (\\HasNoChildren) "." "INBOX.Trash"\r\n'
            b'* LIST (\\HasNoChildren) "." "INBOX.Sent"\r\n',
            "INBOX.Sent",
        ),
        (b'* LIST () NIL INBOX\r\n* LIST () "/" "Envoy&AOk-s"\r\n', "Envoyés"),
        (b'* LIST () "/" INBOX\r\n* LIST () "/" Archive\r\n', None),
    ],
)
async def test_find_sync_folders_by_common_names(list_lines: bytes, expected: str | None) -> None:
    async with (
        scripted(_listing(list_lines)) as port,
        await connect_imap(replace(SCRIPTED_LOGIN, port=port)) as client,
    ):
        found = await client.find_sync_folders()
    assert found == ({"inbox": "INBOX", "sent": expected} if expected else {"inbox": "INBOX"})


async def test_idle_wakes_on_append_from_a_second_connection(imap_settings: Settings) -> None:
    async with (
        await connect_imap(imap_settings()) as watcher,
        await connect_imap(imap_settings()) as sender,
    ):
        await watcher.select("INBOX")
        assert (
            await watcher.idle(0.3) is False
        )  # nothing arrives: times out and leaves IDLE cleanly
        waiting = asyncio.create_task(watcher.idle(10))
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await sender.append("INBOX", sample_message(1))
        assert await waiting is True
        assert loop.time() - started < 5
        # the connection is usable right after IDLE
        assert len(await watcher.uids_from(1)) == 1


async def test_notify_pushes_news_of_another_folder_during_idle(imap_settings: Settings) -> None:
    async with (
        await connect_imap(imap_settings()) as watcher,
        await connect_imap(imap_settings()) as sender,
    ):
        await watcher.select("INBOX")
        assert await watcher.notify(["INBOX", "Sent"]) is True
        await watcher.status("Sent")
        assert watcher.take_news() == set(), "the reply to our own STATUS is not news"
        waiting = asyncio.create_task(watcher.idle(10))
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await sender.append("Sent", sample_message(1))
        assert await waiting is True
        assert loop.time() - started < 5
        assert watcher.take_news() == {"Sent"}
        # news that arrives with the reply to another command is kept for the next wait
        await sender.append("INBOX", sample_message(2))
        await asyncio.sleep(1.0)
        await watcher.noop()
        assert watcher.news == {"INBOX"}
        assert await watcher.idle(5) is True, "IDLE ends at once when news is pending"


async def test_without_notify_other_folders_stay_quiet(imap_settings: Settings) -> None:
    async with (
        await connect_imap(imap_settings()) as watcher,
        await connect_imap(imap_settings()) as sender,
    ):
        watcher.capabilities = watcher.capabilities - {"NOTIFY"}
        await watcher.select("INBOX")
        assert await watcher.notify(["INBOX", "Sent"]) is False
        waiting = asyncio.create_task(watcher.idle(2))
        await asyncio.sleep(0.2)
        await sender.append("Sent", sample_message(1))
        assert await waiting is False and watcher.take_news() == set()


async def test_condstore_changes_since(imap_settings: Settings) -> None:
    async with await connect_imap(imap_settings()) as client:
        await client.append("INBOX", sample_message(1))
        status = await client.select("INBOX", readonly=False)
        assert status.highestmodseq is not None
        assert await client.uids_changed_since(status.highestmodseq) == []
        uid = await client.append("INBOX", sample_message(2))
        assert await client.uids_changed_since(status.highestmodseq) == [uid]
        client.capabilities = client.capabilities - {"ESEARCH"}  # "* SEARCH 2 (MODSEQ 5)" form
        assert await client.uids_changed_since(status.highestmodseq) == [uid]
        folder = await client.status("Sent")
        assert folder.uidvalidity > 0 and folder.exists == 0


async def test_cancelled_command_closes_the_connection(imap_settings: Settings) -> None:
    async with await connect_imap(imap_settings()) as client:
        await client.select("INBOX")
        waiting = asyncio.create_task(client.idle(30))
        await asyncio.sleep(0.2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert client.closed
        with pytest.raises(MailConnectionError) as caught:
            await client.select("INBOX")
        assert caught.value.kind == "unreachable"


async def test_command_refused_by_server_keeps_connection(imap_settings: Settings) -> None:
    from leadline_mail.imap import ImapCommandError

    async with await connect_imap(imap_settings()) as client:
        with pytest.raises(ImapCommandError) as caught:
            await client.select("No Such Folder")
        assert caught.value.status == "NO" and caught.value.kind == "protocol"
        assert (await client.select("INBOX")).uidvalidity > 0
