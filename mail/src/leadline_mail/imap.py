"""A small IMAP4rev1 client on asyncio streams, for syncing and appending mail.

Why not aioimaplib (design.md, "Measured facts"): version 2.0.3 has no
STARTTLS, sends arguments unquoted (so a folder name or password with a
space, a quote or a line break breaks or injects commands) and parses a
response recursively, one stack frame per line or literal, so a single read
of some 450+ header literals raises RecursionError and the FETCH never
completes.  This client is a few hundred lines and does only what Leadline
needs; its reader is iterative and literal-aware (``{n}`` literals are read
with ``readexactly``), which is also several times faster (see
``mail/tests/bench_fetch.py``).

Connection states (RFC 3501 §3)::

    connect → greeting ─┬─ [starttls] STARTTLS → tagged OK → TLS handshake → CAPABILITY
                        └─ [implicit: TLS before the greeting; plain: operator-allowed only]
            → LOGIN or AUTHENTICATE (authenticated) → SELECT/EXAMINE (selected) ⇄ IDLE … DONE → LOGOUT

With an OAuth2 access token (``ImapSettings.access_token``) the client signs in
with ``AUTHENTICATE OAUTHBEARER`` (RFC 7628) where the server offers it, else
``AUTHENTICATE XOAUTH2`` (:mod:`leadline_mail.sasl`), sending the initial
response with the command when the server offers SASL-IR (RFC 4959).

STARTTLS (R22): after the tagged OK, any byte already received is plaintext
an attacker could have injected to be read as if it came over TLS; the
connection is refused if one is buffered before or after the handshake
(:func:`leadline_mail.net.upgrade_to_tls`).  Capabilities learnt before TLS
are discarded and asked again.  PREAUTH on a connection that must be upgraded
is refused (it would skip STARTTLS).

Commands (R22, R27): one command in flight at a time (a lock).  Every
argument is refused with ValueError before anything is sent if it contains
NUL, CR or LF; strings are sent quoted (``\\`` and ``"`` escaped) or, when
not ASCII, as literals (non-synchronising ``{n+}`` when the server offers
LITERAL+).  Every command runs under an inactivity timeout (``timeout``
seconds without a byte from the server) that restarts as data arrives, so a
large FETCH may take long as long as it progresses, but never longer than
``command_limit`` (a server trickling data forever); a timeout or a broken
stream closes the connection, because its state is then unknown.  A NO or
BAD completion raises :class:`ImapCommandError` and leaves the connection
usable.  Literals larger than ``max_literal_bytes`` are read to the end but
kept only up to the cap (``FetchedMessage.truncated``).

News (RFC 3501 §7, RFC 5465 NOTIFY): an ``EXISTS`` for the selected folder, or an
unsolicited ``STATUS`` of another folder that NOTIFY asked for, may arrive with
the reply to any command or during IDLE.  Whatever reads it notes the folder in
:attr:`ImapClient.news`, so nothing a server pushes is lost between two waits;
the reply to our own STATUS command is not news.

Folder names are Unicode in this API and modified UTF-7 on the wire (RFC 3501
§5.1.3).  FETCH is batched (``header_batch`` / ``message_batch`` UIDs per
command) to bound memory and per-command time, not because the parser needs it.
"""  # noqa: E501

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import re
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from types import TracebackType
from typing import Self

from leadline_mail.net import (
    NO_STARTTLS,
    ErrorKind,
    IPNetwork,
    MailConnectionError,
    Resolver,
    TlsMode,
    VettedHost,
    client_tls_context,
    connect_error,
    upgrade_to_tls,
    verify_pin,
    vet_host,
)
from leadline_mail.sasl import (
    ABORT_RESPONSE,
    PREFERRED,
    Mechanism,
    choose_mechanism,
    initial_response,
)

_LINE_LIMIT = 32 * 1024 * 1024  # one response line (a SEARCH of a huge mailbox is one line)
_LITERAL_RE = re.compile(rb"\{(\d{1,12})\}$")
# A bracketed section holds no '[' and is bounded, so a line of unclosed '[' cannot make matching
# slow.
_TOKEN_RE = re.compile(rb'(\()|(\))|("(?:[^"\\]|\\.)*")|((?:[^ ()"\[]|\[[^\[\]]{0,1000}\]|\[)+)')
_FLAG_RE = re.compile(r"^\\?[A-Za-z0-9$_.\-]{1,100}$")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_INTERNALDATE_RE = re.compile(
    rb"^ ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})$"
)

Item = str | bytes | list["Item"]
(
    """A parsed response item: atoms as ``str``, quoted strings and literals as ``bytes``, lists """
    """nested."""
)


@dataclass
class ImapSettings:
    host: str
    port: int
    tls: TlsMode
    username: str
    password: str = field(repr=False)
    pinned_sha256: str | None = None
    cafile: str | None = None
    # an OAuth2 access token: sign in with AUTHENTICATE (OAUTHBEARER or XOAUTH2) instead of LOGIN
    access_token: str | None = field(default=None, repr=False)
    # those the client may sign in with, best first
    sasl_mechanisms: tuple[Mechanism, ...] = PREFERRED
    allow_networks: Sequence[IPNetwork] = ()  # operator allow-list (tests pass 127.0.0.0/8)
    allow_plaintext: bool = False  # "plain" refused unless the operator allows it
    timeout: float = 30.0  # seconds of server silence tolerated during a command
    command_limit: float = 900.0  # no command runs longer than this, even while data keeps coming
    resolver: Resolver | None = None  # DNS for host vetting; None = the system resolver
    max_literal_bytes: int = 64 * 1024 * 1024
    header_batch: int = 1000
    message_batch: int = 100


@dataclass(frozen=True)
class Folder:
    name: str
    flags: frozenset[str]
    delimiter: str | None


@dataclass(frozen=True)
class FolderStatus:
    name: str
    uidvalidity: int
    uidnext: int
    exists: int
    highestmodseq: int | None


@dataclass(frozen=True)
class FetchedHeader:
    uid: int
    size: int
    internaldate: datetime | None
    header: bytes


@dataclass(frozen=True)
class FetchedMessage:
    uid: int
    internaldate: datetime | None
    raw: bytes
    truncated: bool = False  # raw was cut at max_literal_bytes


class ImapCommandError(MailConnectionError):
    """The server completed a command with NO or BAD; the connection stays usable."""

    def __init__(self, command: str, status: str, code: str | None, server_text: str) -> None:
        super().__init__(
            ErrorKind.PROTOCOL,
            f"The mail server refused {command}: {server_text or status}",
            detail=f"{command} -> {status} [{code or ''}] {server_text}",
        )
        self.command = command
        self.status = status
        self.code = code
        self.server_text = server_text


# --- wire encoding ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Literal:
    data: bytes


_Arg = bytes | _Literal


def _refuse_controls(value: str | bytes) -> None:
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    if b"\x00" in raw or b"\r" in raw or b"\n" in raw:
        raise ValueError("IMAP arguments must not contain NUL, CR or LF")


def _astring(value: str | bytes) -> _Arg:
    """A string argument: quoted when ASCII, else a literal."""
    _refuse_controls(value)
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if raw.isascii():
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return _Literal(raw)


def _atom(value: str) -> bytes:
    """Syntax we build ourselves (sequence sets, numbers, flag lists); checked all the same."""
    _refuse_controls(value)
    return value.encode("ascii")


def encode_mailbox_name(name: str) -> str:
    """Unicode → modified UTF-7 (RFC 3501 §5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            encoded = base64.b64encode("".join(pending).encode("utf-16-be")).decode("ascii")
            out.append("&" + encoded.rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def decode_mailbox_name(name: str) -> str:
    """Modified UTF-7 → Unicode; a malformed name is returned as received."""
    if "&" not in name:
        return name
    out: list[str] = []
    index = 0
    try:
        while index < len(name):
            start = name.find("&", index)
            if start < 0:
                out.append(name[index:])
                break
            out.append(name[index:start])
            end = name.index("-", start)
            chunk = name[start + 1 : end]
            if chunk:
                padded = chunk.replace(",", "/") + "=" * (-len(chunk) % 4)
                out.append(base64.b64decode(padded, validate=True).decode("utf-16-be"))
            else:
                out.append("&")
            index = end + 1
    except (ValueError, UnicodeDecodeError):
        return name
    return "".join(out)


def _mailbox(name: str) -> bytes:
    _refuse_controls(name)
    if not name:
        raise ValueError("a folder name must not be empty")
    if name.upper() == "INBOX":
        return b"INBOX"
    quoted = _astring(encode_mailbox_name(name))
    assert isinstance(quoted, bytes)  # modified UTF-7 is ASCII: always quoted, never a literal
    return quoted


def _canonical_folder(name: str) -> str:
    return "INBOX" if name.upper() == "INBOX" else name


def _sequence_set(uids: Sequence[int]) -> str:
    """Sorted distinct UIDs → compact ``1:5,7,9:12``."""
    parts: list[str] = []
    start = prev = uids[0]
    for uid in uids[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if prev != start else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(parts)


def _expand_sequence_set(text: str) -> list[int]:
    result: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition(":")
        if high:
            a, b = int(low), int(high)
            result.extend(range(min(a, b), max(a, b) + 1))
        else:
            result.append(int(low))
    return result


def _internaldate_arg(when: datetime) -> bytes:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    offset = when.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    text = (
        f"{when.day:02d}-{_MONTHS[when.month - 1]}-{when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} "
        f"{sign}{minutes // 60:02d}{minutes % 60:02d}"
    )
    return b'"' + text.encode("ascii") + b'"'


def parse_internaldate(value: Item) -> datetime | None:
    return _internaldate(value) if isinstance(value, bytes) else None


# a mailbox's dates repeat (same delivery second); parsing shows in profiles
@functools.lru_cache(maxsize=4096)
def _internaldate(value: bytes) -> datetime | None:
    match = _INTERNALDATE_RE.match(value)
    if not match:
        return None
    day, month, year, hour, minute, second, sign, off_h, off_m = match.groups()
    try:
        month_index = _MONTHS.index(month.decode().title()) + 1
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        return datetime(
            int(year),
            month_index,
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=timezone(offset if sign == b"+" else -offset),
        )
    except ValueError:
        return None


# --- responses -------------------------------------------------------------------------------


_STATUS_WORDS = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})


@dataclass
class _Response:
    """One server response: its first line split up, the raw text segments and the literals between
    them."""

    tag: bytes  # b"*", b"+" or a command tag
    kind: str  # OK/NO/BAD/BYE/PREAUTH, CAPABILITY, LIST, FETCH, EXISTS, SEARCH, ...
    number: int | None  # "* 12 FETCH" / "* 3 EXISTS"
    code: str | None  # status response code without brackets: "UIDVALIDITY 3857529045"
    text: str  # human-readable text of a status response
    segments: list[bytes]  # data after ``kind``, split at literals
    literals: list[bytes]
    truncated: bool = False

    def items(self) -> list[Item]:
        return _parse_items(self.segments, self.literals)


def _parse_items(segments: list[bytes], literals: list[bytes]) -> list[Item]:
    """Tokenise response data iteratively (no recursion, whatever the nesting or literal count).

    ``findall`` does the scanning in C; a character no token can start with (a stray quote) is
    skipped rather than failing the whole response.
    """
    root: list[Item] = []
    stack: list[list[Item]] = [root]
    for index, segment in enumerate(segments):
        for opened, closed, quoted, atom in _TOKEN_RE.findall(segment):
            if opened:
                child: list[Item] = []
                stack[-1].append(child)
                stack.append(child)
            elif closed:
                if len(stack) > 1:
                    stack.pop()
            elif quoted:
                value = quoted[1:-1]
                stack[-1].append(re.sub(rb"\\(.)", rb"\1", value) if b"\\" in value else value)
            else:
                stack[-1].append(atom.decode("utf-8", "replace"))
        if index < len(literals):
            stack[-1].append(literals[index])
    return root


def _split_code(text: bytes) -> tuple[str | None, str]:
    if text.startswith(b"["):
        close = text.find(b"]")
        if close > 0:
            return text[1:close].decode("utf-8", "replace"), text[close + 1 :].strip().decode(
                "utf-8", "replace"
            )
    return None, text.decode("utf-8", "replace")


def _as_str(item: Item) -> str:
    if isinstance(item, bytes):
        return item.decode("utf-8", "replace")
    if isinstance(item, str):
        return item
    return ""


def _folder_name(item: Item) -> str:
    """A folder name as the server sends it (modified UTF-7) → as this API names it."""
    return _canonical_folder(decode_mailbox_name(_as_str(item)))


def _as_int(item: Item) -> int | None:
    if isinstance(item, str) and item.isdigit():
        return int(item)
    return None


_FAST_FETCH_RE = re.compile(
    rb'\((?:UID (\d+)|RFC822\.SIZE (\d+)|INTERNALDATE ("[^"\\]*")|FLAGS \([^()"]*\)|MODSEQ \(\d+\)|'
    rb" )*"
    rb"(BODY\[(?:HEADER(?:\.FIELDS \([^()\[\]]{0,1000}\))?)?\]) $"
)
# RFC 5322 field-name: printable ASCII but the colon
_FIELD_NAME_RE = re.compile(r"^[!-9;-~]{1,100}$")


def _fetch_attributes(response: _Response) -> dict[str, Item]:
    """``FETCH (name value ...)`` → ``{NAME: value}``.

    The shape this client asks for (numbers, a date, one literal last) is matched by one regular
    expression; anything else goes through the general tokenizer.
    """
    segments = response.segments
    if len(segments) == 2 and segments[1] == b")":
        fast = _FAST_FETCH_RE.fullmatch(segments[0])
        if fast is not None:
            uid, size, date, section = fast.groups()
            attrs: dict[str, Item] = {section.decode("ascii"): response.literals[0]}
            if uid is not None:
                attrs["UID"] = uid.decode("ascii")
            if size is not None:
                attrs["RFC822.SIZE"] = size.decode("ascii")
            if date is not None:
                attrs["INTERNALDATE"] = date[1:-1]
            return attrs
    items = response.items()
    if not items or not isinstance(items[0], list):
        return {}
    data = items[0]
    return {_as_str(data[i]).upper(): data[i + 1] for i in range(0, len(data) - 1, 2)}


# --- the client ------------------------------------------------------------------------------


_SENT_NAMES = (
    "Sent",
    "Sent Items",
    "Sent Messages",
    "Sent Mail",
    "Sent Mails",
    "Sent-Mail",
    "[Gmail]/Sent Mail",
    "[Google Mail]/Sent Mail",
    "INBOX.Sent",
    "INBOX/Sent",
    "INBOX.Sent Items",
    "INBOX.Sent Messages",
    "INBOX.Sent Mail",
    "Gesendet",
    "Gesendete Elemente",
    "Gesendete Objekte",
    "Envoyés",
    "Éléments envoyés",
    "Enviados",
    "Elementos enviados",
    "Posta inviata",
    "Inviata",
    "Verzonden",
    "Verzonden items",
    "Skickat",
    "Skickade objekt",
    "Sendt",
    "Sendte elementer",
    "Wysłane",
    "Отправленные",
)


class ImapClient:
    """An authenticated IMAP connection; create it with :func:`connect_imap`."""

    capabilities: frozenset[str]

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        settings: ImapSettings,
        host: VettedHost,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._settings = settings
        self._host = host
        self._lock = asyncio.Lock()
        self._tag = 0
        self._deadline: asyncio.Timeout | None = None
        self._rearm_at = 0.0
        self._hard_deadline = 0.0
        self._loop = asyncio.get_running_loop()
        self._closed: MailConnectionError | None = None
        self._bye: str | None = None
        self.capabilities = frozenset()
        self.selected: str | None = None
        # folders the server reported changes of since :meth:`take_news`
        self.news: set[str] = set()
        self._status_asked: str | None = None  # the folder our STATUS command in flight asks about
        self.notifying = False  # NOTIFY SET is in force: the server pushes changes of other folders

    # -- context manager ------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.logout()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    # -- low level ------------------------------------------------------------------------

    def _fail(self, error: MailConnectionError) -> MailConnectionError:
        """Close the connection for good: after a timeout or a broken stream its state is
        unknown."""
        if self._closed is None:
            self._closed = error
            self._writer.close()
        return error

    def _stream_error(self, exc: BaseException) -> MailConnectionError:
        if isinstance(exc, MailConnectionError):
            return self._fail(exc)
        if isinstance(exc, TimeoutError):
            return self._fail(
                MailConnectionError(
                    ErrorKind.TIMEOUT,
                    f"The mail server {self._host.hostname} stopped answering. Sync will retry.",
                )
            )
        if isinstance(exc, asyncio.LimitOverrunError | ValueError):
            return self._fail(
                MailConnectionError(
                    ErrorKind.PROTOCOL,
                    "The mail server sent a response line that is too long.",
                    detail=str(exc),
                )
            )
        if isinstance(exc, ssl.SSLError):
            return self._fail(
                MailConnectionError(ErrorKind.TLS, "The secure connection broke.", detail=str(exc))
            )
        if (
            self._bye is not None
            and (refused := _too_many_connections(None, self._bye)) is not None
        ):
            return self._fail(refused)
        reason = f" ({self._bye})" if self._bye else ""
        return self._fail(
            MailConnectionError(
                ErrorKind.UNREACHABLE,
                (
                    f"The mail server {self._host.hostname} closed the connection{reason}. Sync "
                    f"will retry."
                ),
                detail=repr(exc),
            )
        )

    def _interrupted(self) -> None:
        """The caller cancelled a command half-way: what the server sends next no longer lines
        up."""
        self._fail(
            MailConnectionError(
                ErrorKind.UNREACHABLE, "A mail server command was interrupted; reconnecting."
            )
        )

    def _arm(self, deadline: asyncio.Timeout) -> None:
        now = self._loop.time()
        self._deadline = deadline
        self._rearm_at = now + self._settings.timeout / 4
        self._hard_deadline = now + max(self._settings.command_limit, self._settings.timeout)
        deadline.reschedule(now + self._settings.timeout)

    def _progress(self) -> None:
        """Data arrived: push the inactivity deadline out.

        Rescheduling a timer costs more than reading a small response, so the deadline moves only
        once a quarter of the timeout has passed: the server may then stay silent between ¾ and 1×
        ``timeout``.
        """
        if self._deadline is not None:
            now = self._loop.time()
            if now >= self._rearm_at:
                self._rearm_at = now + self._settings.timeout / 4
                self._deadline.reschedule(min(now + self._settings.timeout, self._hard_deadline))

    async def _read_response(self) -> _Response:
        reader = self._reader
        segments: list[bytes] = []
        literals: list[bytes] = []
        truncated = False
        while True:
            line = await reader.readuntil(b"\n")
            self._progress()
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            match = _LITERAL_RE.search(line) if line.endswith(b"}") else None
            if match is None:
                segments.append(line)
                break
            segments.append(line[: match.start()])
            size = int(match.group(1))
            cap = self._settings.max_literal_bytes
            if size <= cap:
                literals.append(await reader.readexactly(size))
            else:
                kept = await reader.readexactly(cap)
                left = size - cap
                while left:
                    left -= len(await reader.readexactly(min(left, 1 << 20)))
                    self._progress()
                literals.append(kept)
                truncated = True
            self._progress()
        first = segments[0]
        tag, _, rest = first.partition(b" ")
        number: int | None = None
        word, _, rest2 = rest.partition(b" ")
        if tag == b"*" and word.isdigit():
            number = int(word)
            word, _, rest2 = rest2.partition(b" ")
        kind = word.decode("ascii", "replace").upper()
        code: str | None = None
        text = ""
        if tag == b"+":
            kind, text = "+", rest.decode("utf-8", "replace")
        elif kind in _STATUS_WORDS and number is None:
            code, text = _split_code(rest2)
        segments[0] = rest2
        response = _Response(tag, kind, number, code, text, segments, literals, truncated)
        if tag != b"+":
            self._note(response)
        return response

    def _note(self, response: _Response) -> None:
        """Keep what untagged responses tell about the connection itself."""
        if response.kind == "CAPABILITY":
            self.capabilities = frozenset(
                _as_str(i).upper() for i in response.items() if isinstance(i, str)
            )
        elif response.code and response.code.upper().startswith("CAPABILITY "):
            self.capabilities = frozenset(response.code.upper().split()[1:])
        elif response.kind == "BYE":
            self._bye = response.text
        elif response.kind == "EXISTS" and self.selected is not None:
            self.news.add(self.selected)
        elif response.kind == "STATUS" and response.tag == b"*":
            items = response.items()
            folder = _folder_name(items[0]) if items else ""
            if folder and folder == self._status_asked:
                self._status_asked = None  # the reply to our own STATUS command
            elif folder:
                self.news.add(folder)

    def take_news(self) -> set[str]:
        """The folders reported changed since the last call (and forget them)."""
        news, self.news = self.news, set()
        return news

    def _ensure_open(self) -> None:
        if self._closed is not None:
            raise MailConnectionError(
                ErrorKind.UNREACHABLE,
                "The connection to the mail server is closed.",
                detail=self._closed.user_message,
            )

    @contextlib.asynccontextmanager
    async def _exchange(self) -> AsyncIterator[bytes]:
        """One tagged exchange under the lock and the command timeout; yields its tag. A broken
        stream or a timeout becomes a MailConnectionError, a cancellation marks the session
        interrupted."""
        self._ensure_open()
        async with self._lock:
            self._ensure_open()
            self._tag += 1
            try:
                async with asyncio.timeout(self._settings.timeout) as deadline:
                    self._arm(deadline)
                    yield b"L%04d" % self._tag
            except (
                TimeoutError,
                OSError,
                EOFError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
                MailConnectionError,
            ) as exc:
                raise self._stream_error(exc) from None
            except asyncio.CancelledError:
                self._interrupted()
                raise
            finally:
                self._deadline = None

    async def _command(
        self, name: str, *args: _Arg, allow_failure: bool = False
    ) -> tuple[_Response, list[_Response]]:
        """Run one command: send it (literals included), collect untagged responses up to its
        completion."""
        untagged: list[_Response] = []
        async with self._exchange() as tag:
            done = await self._send(tag, name.encode("ascii"), args, untagged)
            while done is None:
                response = await self._read_response()
                if response.tag == tag:
                    done = response
                elif response.tag == b"*":
                    untagged.append(response)
        if done.kind != "OK" and not allow_failure:
            raise ImapCommandError(name, done.kind, done.code, done.text)
        return done, untagged

    async def _send(
        self, tag: bytes, name: bytes, args: Sequence[_Arg], untagged: list[_Response]
    ) -> _Response | None:
        """Write a command; wait for ``+`` before each synchronising literal.

        Returns the tagged completion if the server ended the command early (a NO instead of ``+``).
        """
        literal_plus = "LITERAL+" in self.capabilities
        pending = bytearray(tag + b" " + name)
        for arg in args:
            pending += b" "
            if isinstance(arg, bytes):
                pending += arg
                continue
            size = len(arg.data)
            if literal_plus:
                pending += b"{%d+}\r\n" % size
            else:
                pending += b"{%d}\r\n" % size
                self._writer.write(pending)
                pending = bytearray()
                while True:
                    response = await self._read_response()
                    if response.tag == b"+":
                        break
                    if response.tag == tag:
                        return response
                    untagged.append(response)
            pending += arg.data
        pending += b"\r\n"
        self._writer.write(pending)
        await self._writer.drain()
        return None

    # -- connection set-up ----------------------------------------------------------------

    async def _open(self, context: ssl.SSLContext | None) -> None:  # noqa: C901 - 13, older than the limit
        settings = self._settings
        try:
            async with asyncio.timeout(settings.timeout):
                greeting = await self._read_response()
        except (
            TimeoutError,
            OSError,
            EOFError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ) as exc:
            raise self._stream_error(exc) from None
        if greeting.tag != b"*" or greeting.kind not in {"OK", "PREAUTH"}:
            raise self._fail(
                MailConnectionError(
                    ErrorKind.UNREACHABLE,
                    f"The mail server refused the connection: {greeting.text or greeting.kind}",
                )
            )
        if settings.tls == "starttls":
            if greeting.kind == "PREAUTH":
                raise self._fail(
                    MailConnectionError(
                        ErrorKind.TLS,
                        (
                            "The server skipped STARTTLS (PREAUTH); the connection was refused as "
                            "unsafe."
                        ),
                    )
                )
            if not self.capabilities:
                await self._command("CAPABILITY")
            if "STARTTLS" not in self.capabilities:
                raise self._fail(MailConnectionError(ErrorKind.TLS, NO_STARTTLS))
            assert context is not None
            try:
                await self._command("STARTTLS")
                await upgrade_to_tls(
                    self._reader, self._writer, context, self._host, settings.timeout
                )
            except ImapCommandError:
                raise self._fail(MailConnectionError(ErrorKind.TLS, NO_STARTTLS)) from None
            except MailConnectionError as exc:
                raise self._fail(exc) from None
            self.capabilities = frozenset()
        if context is not None:
            try:
                verify_pin(self._writer.get_extra_info("ssl_object"), settings.pinned_sha256)
            except MailConnectionError as exc:
                raise self._fail(exc) from None
        if greeting.kind == "PREAUTH":
            await self._command("CAPABILITY")
            return
        if not self.capabilities:
            await self._command("CAPABILITY")
        await self._login()

    async def _login(self) -> None:
        settings = self._settings
        if settings.access_token is not None:
            await self._authenticate(settings.access_token)
            return
        if "LOGINDISABLED" in self.capabilities:
            raise self._fail(
                MailConnectionError(
                    ErrorKind.TLS,
                    (
                        "The server does not allow logging in without encryption. Turn on SSL or "
                        "STARTTLS."
                    ),
                )
            )
        done, _ = await self._command(
            "LOGIN", _astring(settings.username), _astring(settings.password), allow_failure=True
        )
        if done.kind != "OK":
            raise self._fail(_login_error(done))
        # Capabilities change on login; the tagged OK usually carries the new list.
        if not (done.code or "").upper().startswith("CAPABILITY "):
            await self._command("CAPABILITY")

    async def _authenticate(self, token: str) -> None:
        settings = self._settings
        offered = {c.removeprefix("AUTH=") for c in self.capabilities if c.startswith("AUTH=")}
        mechanism = choose_mechanism(offered, settings.sasl_mechanisms)
        if mechanism is None:
            raise self._fail(
                MailConnectionError(
                    ErrorKind.PROTOCOL,
                    (
                        "The mail server does not accept OAuth2 sign-in (neither OAUTHBEARER nor "
                        "XOAUTH2)."
                    ),
                )
            )
        done = await self._sasl(
            mechanism,
            initial_response(
                mechanism, settings.username, token, self._host.hostname, settings.port
            ),
        )
        if done.kind != "OK":
            raise self._fail(
                MailConnectionError(
                    ErrorKind.OAUTH_REFUSED,
                    "The mail server refused the sign-in with your account.",
                    detail=(
                        f"AUTHENTICATE {mechanism} -> {done.kind} [{done.code or ''}] {done.text}"
                    ),
                )
            )
        if not (done.code or "").upper().startswith("CAPABILITY "):
            await self._command("CAPABILITY")

    async def _sasl(self, mechanism: Mechanism, response: bytes) -> _Response:
        """``AUTHENTICATE``: the initial response with the command (SASL-IR) or after the first
        ``+``; an error challenge after it is answered with the mechanism's abort, and the server
        then says NO."""
        async with self._exchange() as tag:
            sent = "SASL-IR" in self.capabilities
            line = (
                tag
                + b" AUTHENTICATE "
                + mechanism.encode("ascii")
                + (b" " + response if sent else b"")
            )
            self._writer.write(line + b"\r\n")
            await self._writer.drain()
            while True:
                reply = await self._read_response()
                if reply.tag == tag:
                    return reply
                if reply.tag == b"+":
                    self._writer.write((ABORT_RESPONSE[mechanism] if sent else response) + b"\r\n")
                    sent = True
                    await self._writer.drain()

    # -- commands ------------------------------------------------------------------------

    async def capability(self) -> frozenset[str]:
        await self._command("CAPABILITY")
        return self.capabilities

    async def noop(self) -> None:
        """Keep the connection alive and let the server report changes."""
        await self._command("NOOP")

    async def list_folders(self) -> list[Folder]:
        args: list[_Arg] = [b'""', b'"*"']
        if {"SPECIAL-USE", "LIST-EXTENDED"} <= self.capabilities:
            args.append(b"RETURN (SPECIAL-USE)")
        _, untagged = await self._command("LIST", *args)
        folders: list[Folder] = []
        for response in untagged:
            if response.kind != "LIST":
                continue
            items = response.items()
            if len(items) < 3 or not isinstance(items[0], list):
                continue
            flags = frozenset(_as_str(flag) for flag in items[0])
            delimiter = None if items[1] == "NIL" else _as_str(items[1])
            folders.append(Folder(name=_folder_name(items[2]), flags=flags, delimiter=delimiter))
        return folders

    async def find_sync_folders(self) -> dict[str, str]:
        """``{"inbox": ..., "sent": ...}`` (R4); "sent" is missing when no Sent folder exists."""
        folders = [
            f
            for f in await self.list_folders()
            if not {"\\noselect", "\\nonexistent"} & {flag.lower() for flag in f.flags}
        ]
        result = {"inbox": "INBOX"}
        special = [f.name for f in folders if "\\sent" in {flag.lower() for flag in f.flags}]
        if special:
            result["sent"] = min(special, key=len)  # the top-level one if several are marked
            return result
        by_name = {f.name.lower(): f.name for f in folders}
        for candidate in _SENT_NAMES:
            if candidate.lower() in by_name:
                result["sent"] = by_name[candidate.lower()]
                break
        return result

    async def select(self, folder: str, readonly: bool = True) -> FolderStatus:
        args: list[_Arg] = [_mailbox(folder)]
        if "CONDSTORE" in self.capabilities:
            args.append(b"(CONDSTORE)")
        self.selected = None
        done, untagged = await self._command("EXAMINE" if readonly else "SELECT", *args)
        exists = 0
        codes: dict[str, str] = {}
        for response in [*untagged, done]:
            if response.kind == "EXISTS" and response.number is not None:
                exists = response.number
            elif response.code:
                key, _, value = response.code.partition(" ")
                codes[key.upper()] = value.strip()
        self.selected = folder
        uidnext = (
            int(codes["UIDNEXT"])
            if codes.get("UIDNEXT", "").isdigit()
            else await self._guess_uidnext(exists)
        )
        modseq = codes.get("HIGHESTMODSEQ", "")
        return FolderStatus(
            name=folder,
            uidvalidity=int(codes.get("UIDVALIDITY", "0") or 0),
            uidnext=uidnext,
            exists=exists,
            highestmodseq=int(modseq) if modseq.isdigit() else None,
        )

    async def _guess_uidnext(self, exists: int) -> int:
        """Servers may omit UIDNEXT on SELECT: the last message's UID + 1 is a safe lower bound."""
        if exists == 0:
            return 1
        _, untagged = await self._command("FETCH", b"*", b"(UID)")
        uids = [_as_int(_fetch_attributes(r).get("UID", "")) for r in untagged if r.kind == "FETCH"]
        return max((uid for uid in uids if uid is not None), default=0) + 1

    async def status(self, folder: str) -> FolderStatus:
        """STATUS of a folder that is not selected (cheap polling of Sent)."""
        wanted = "UIDVALIDITY UIDNEXT MESSAGES" + (
            " HIGHESTMODSEQ" if "CONDSTORE" in self.capabilities else ""
        )
        self._status_asked = _canonical_folder(folder)
        try:
            _, untagged = await self._command("STATUS", _mailbox(folder), _atom(f"({wanted})"))
        finally:
            self._status_asked = None
        values: dict[str, int] = {}
        for response in untagged:
            if response.kind == "STATUS":
                items = response.items()
                if len(items) >= 2 and isinstance(items[1], list):
                    pairs = items[1]
                    for i in range(0, len(pairs) - 1, 2):
                        number = _as_int(pairs[i + 1])
                        if number is not None:
                            values[_as_str(pairs[i]).upper()] = number
        return FolderStatus(
            name=folder,
            uidvalidity=values.get("UIDVALIDITY", 0),
            uidnext=values.get("UIDNEXT", 0),
            exists=values.get("MESSAGES", 0),
            highestmodseq=values.get("HIGHESTMODSEQ"),
        )

    async def _search(self, *criteria: _Arg) -> list[int]:
        charset: tuple[bytes, ...] = ()
        if any(isinstance(arg, _Literal) for arg in criteria):
            charset = (b"CHARSET", b"UTF-8")
        if "ESEARCH" in self.capabilities:
            _, untagged = await self._command(
                "UID", b"SEARCH", b"RETURN (ALL)", *charset, *criteria
            )
            uids: list[int] = []
            for response in untagged:
                if response.kind != "ESEARCH":
                    continue
                items = response.items()
                for i, item in enumerate(items[:-1]):
                    if isinstance(item, str) and item.upper() == "ALL":
                        uids.extend(_expand_sequence_set(_as_str(items[i + 1])))
            return uids
        _, untagged = await self._command("UID", b"SEARCH", *charset, *criteria)
        found: list[int] = []
        for response in untagged:
            if response.kind == "SEARCH":
                # "(MODSEQ n)" may follow the numbers (RFC 7162): it is a list, so skipped here
                found.extend(n for n in (_as_int(i) for i in response.items()) if n is not None)
        return found

    async def uids_from(self, first_uid: int) -> list[int]:
        """UIDs ≥ ``first_uid`` in the selected folder, ascending."""
        first = max(1, int(first_uid))
        # "n:*" also matches the highest UID when n is above it (RFC 3501 §6.4.8): filter.
        return sorted({uid for uid in await self._search(_atom(f"UID {first}:*")) if uid >= first})

    async def uids_between(self, low: int, high: int) -> list[int]:
        """UIDs from ``low`` to ``high`` in the selected folder, ascending (one window of a long
        listing)."""
        low, high = max(1, int(low)), int(high)
        if high < low:
            return []
        return sorted(
            {uid for uid in await self._search(_atom(f"UID {low}:{high}")) if low <= uid <= high}
        )

    async def uids_changed_since(self, modseq: int) -> list[int]:
        """UIDs whose mod-sequence is above ``modseq`` (CONDSTORE, RFC 7162), ascending."""
        if "CONDSTORE" not in self.capabilities:
            raise MailConnectionError(
                ErrorKind.PROTOCOL, "The mail server does not support CONDSTORE."
            )
        return sorted(set(await self._search(_atom(f"MODSEQ {int(modseq) + 1}"))))

    async def uids_mentioning(
        self, addresses: Sequence[str], *, up_to: int, since: date | None = None
    ) -> list[int]:
        """UIDs ≤ ``up_to`` whose From, To, Cc or Bcc contains one of ``addresses``, ascending.

        With ``since``, only messages dated (Date header) or received on or after that day. The
        server matches substrings: callers check the headers they fetch.
        """
        if not addresses or up_to < 1:
            return []
        keys: list[_Arg] = []
        for address in addresses:
            value = _astring(address)
            # OR takes two keys: (OR <so far> <this address>)
            keys = [b"OR", *keys] if keys else keys
            keys += [b"OR", b"FROM", value, b"OR", b"TO", value, b"OR", b"CC", value, b"BCC", value]
        criteria: list[_Arg] = [b"UID", _atom(f"1:{int(up_to)}")]
        if since is not None:
            day = f"{since.day}-{_MONTHS[since.month - 1]}-{since.year}".encode()
            criteria += [b"OR", b"SENTSINCE", day, b"SINCE", day]
        return sorted({uid for uid in await self._search(*criteria, *keys) if uid <= up_to})

    async def uids_with_header(self, name: str, value: str, *, from_uid: int = 1) -> list[int]:
        """UIDs ≥ ``from_uid`` in the selected folder whose header ``name`` contains ``value`` (UID
        SEARCH HEADER).  A server without an index of that header reads every message of the range
        for it, so a caller that knows where to look names the range."""
        first = max(1, int(from_uid))
        criteria: list[_Arg] = [b"HEADER", _astring(name), _astring(value)]
        if first > 1:
            criteria = [b"UID", _atom(f"{first}:*"), *criteria]
        # "n:*" also matches the highest UID when n is above it (RFC 3501 §6.4.8): filter.
        return sorted({uid for uid in await self._search(*criteria) if uid >= first})

    async def expunge(self, uids: Sequence[int]) -> bool:
        """Flag ``uids`` \\Deleted and expunge exactly them (UIDPLUS ``UID EXPUNGE``); without
        UIDPLUS they stay flagged only (a plain EXPUNGE would also remove what the user flagged):
        False."""
        if not uids:
            return True
        uid_set = _atom(_sequence_set(sorted(set(uids))))
        await self._command("UID", b"STORE", uid_set, b"+FLAGS.SILENT", b"(\\Deleted)")
        if "UIDPLUS" not in self.capabilities:
            return False
        await self._command("UID", b"EXPUNGE", uid_set)
        return True

    async def fetch_headers(
        self, uids: Sequence[int], fields: Sequence[str] = ()
    ) -> list[FetchedHeader]:
        """Size, arrival date and raw header block of each message; expunged ones are simply
        missing.

        ``fields``: only the header fields of those names (``HEADER.FIELDS``, RFC 3501), in the
        order the message has them, and the empty line that ends a header block.  A server can
        answer them from its cache of the fields clients ask for, without reading each message
        (Dovecot), and they are a small part of a real header block (its Received, DKIM and ARC
        lines are most of it).
        """
        if fields:
            if not all(_FIELD_NAME_RE.match(name) for name in fields):
                raise ValueError("a header field name is not printable ASCII without a colon")
            section = b"HEADER.FIELDS (" + b" ".join(_atom(name) for name in fields) + b")"
        else:
            section = b"HEADER"
        item = b"(UID RFC822.SIZE INTERNALDATE BODY.PEEK[" + section + b"])"
        result: list[FetchedHeader] = []
        for batch in self._batches(uids, self._settings.header_batch):
            _, untagged = await self._command("UID", b"FETCH", _atom(_sequence_set(batch)), item)
            wanted = set(batch)
            for response in untagged:
                if response.kind != "FETCH":
                    continue
                attrs = _fetch_attributes(response)
                uid = _as_int(attrs.get("UID", ""))
                header = next(
                    (value for name, value in attrs.items() if name.startswith("BODY[HEADER")), None
                )
                if uid is None or uid not in wanted or header is None:
                    continue
                wanted.discard(uid)
                result.append(
                    FetchedHeader(
                        uid=uid,
                        size=_as_int(attrs.get("RFC822.SIZE", "")) or 0,
                        internaldate=parse_internaldate(attrs.get("INTERNALDATE", "")),
                        header=header if isinstance(header, bytes) else b"",
                    )
                )
        result.sort(key=lambda h: h.uid)
        return result

    async def fetch_messages(self, uids: Sequence[int]) -> list[FetchedMessage]:
        """Whole messages, without setting \\Seen (BODY.PEEK)."""
        result: list[FetchedMessage] = []
        for batch in self._batches(uids, self._settings.message_batch):
            _, untagged = await self._command(
                "UID", b"FETCH", _atom(_sequence_set(batch)), b"(UID INTERNALDATE BODY.PEEK[])"
            )
            wanted = set(batch)
            for response in untagged:
                if response.kind != "FETCH":
                    continue
                attrs = _fetch_attributes(response)
                uid = _as_int(attrs.get("UID", ""))
                body = attrs.get("BODY[]")
                if uid is None or uid not in wanted or body is None:
                    continue
                wanted.discard(uid)
                result.append(
                    FetchedMessage(
                        uid=uid,
                        internaldate=parse_internaldate(attrs.get("INTERNALDATE", "")),
                        raw=body if isinstance(body, bytes) else b"",
                        truncated=response.truncated,
                    )
                )
        result.sort(key=lambda m: m.uid)
        return result

    @staticmethod
    def _batches(uids: Sequence[int], size: int) -> list[list[int]]:
        ordered = sorted({int(uid) for uid in uids if int(uid) > 0})
        return [ordered[i : i + size] for i in range(0, len(ordered), max(1, size))]

    async def notify(self, folders: Sequence[str]) -> bool:
        """Ask the server to push new and expunged mail of ``folders`` and the selected folder (RFC
        5465).

        Changes then arrive as news (see the module docstring) during IDLE or with any reply.  False
        when the server offers no NOTIFY or refuses this request: the caller must poll those folders
        instead.
        """
        if "NOTIFY" not in self.capabilities:
            return False
        args: list[_Arg] = [b"SET", b"(selected (MessageNew MessageExpunge))"]
        if folders:
            names = b" ".join(_mailbox(folder) for folder in folders)
            args.append(b"(mailboxes (" + names + b") (MessageNew MessageExpunge))")
        try:
            await self._command("NOTIFY", *args)
        except ImapCommandError:
            return False
        self.notifying = True
        return True

    async def idle(self, timeout: float) -> bool:  # noqa: C901 - 15, older than the limit
        """IDLE (RFC 2177) until the server reports news (True) or ``timeout`` passes (False).

        Always leaves IDLE with DONE and waits for the tagged OK, so the
        connection is ready for the next command.  A read is never cancelled
        half-way through a response: the waiting happens around whole reads.
        """
        if "IDLE" not in self.capabilities:
            raise MailConnectionError(ErrorKind.PROTOCOL, "The mail server does not support IDLE.")
        self._ensure_open()
        async with self._lock:
            self._ensure_open()
            self._tag += 1
            tag = b"L%04d" % self._tag
            loop = asyncio.get_running_loop()
            until = loop.time() + timeout
            read: asyncio.Future[_Response] | None = None
            try:
                async with asyncio.timeout(self._settings.timeout) as deadline:
                    self._arm(deadline)
                    self._writer.write(tag + b" IDLE\r\n")
                    await self._writer.drain()
                    while True:  # up to the continuation request
                        response = await self._read_response()
                        if response.tag == tag:
                            raise ImapCommandError(
                                "IDLE", response.kind, response.code, response.text
                            )
                        if response.tag == b"+":
                            break
                    # Idling: only the caller's period bounds the wait; DONE is sent when it ends.
                    deadline.reschedule(None)
                    self._deadline = None
                    while not self.news:
                        read = asyncio.ensure_future(self._read_response())
                        finished, _ = await asyncio.wait(
                            {read}, timeout=max(0.0, until - loop.time())
                        )
                        if not finished:
                            break
                        response, read = read.result(), None
                        if response.tag == tag:
                            raise ImapCommandError(
                                "IDLE", response.kind, response.code, response.text
                            )
                    self._writer.write(b"DONE\r\n")
                    await self._writer.drain()
                    self._arm(deadline)
                    while True:
                        response = await read if read is not None else await self._read_response()
                        read = None
                        if response.tag == tag:
                            break
            except ImapCommandError:
                raise
            except (
                TimeoutError,
                OSError,
                EOFError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
                MailConnectionError,
            ) as exc:
                raise self._stream_error(exc) from None
            except asyncio.CancelledError:
                self._interrupted()
                raise
            finally:
                self._deadline = None
                if read is not None and not read.done():
                    read.cancel()
            if response.kind != "OK":
                raise ImapCommandError("IDLE", response.kind, response.code, response.text)
            return bool(self.news)

    async def append(
        self,
        folder: str,
        raw: bytes,
        flags: Sequence[str] = ("\\Seen",),
        when: datetime | None = None,
    ) -> int | None:
        """Store a message in ``folder``; the new UID when the server reports it (UIDPLUS
        APPENDUID)."""
        done, _ = await self._command(
            "APPEND", _mailbox(folder), *_append_message(raw, flags, when)
        )
        if done.code and done.code.upper().startswith("APPENDUID "):
            parts = done.code.split()
            if len(parts) == 3 and parts[2].isdigit():
                return int(parts[2])
        return None

    async def append_many(
        self,
        folder: str,
        messages: Sequence[tuple[bytes, datetime | None]],
        flags: Sequence[str] = ("\\Seen",),
    ) -> None:
        """Store several messages (raw bytes, internal date) in ``folder``: in one command when the
        server offers MULTIAPPEND (RFC 3502: all are stored or none, and the server commits them at
        once), else one APPEND after another on this connection."""
        if "MULTIAPPEND" not in self.capabilities or len(messages) == 1:
            for raw, when in messages:
                await self.append(folder, raw, flags, when)
            return
        args: list[_Arg] = [_mailbox(folder)]
        for raw, when in messages:
            args.extend(_append_message(raw, flags, when))
        await self._command("APPEND", *args)

    async def create_folder(self, name: str) -> None:
        await self._command("CREATE", _mailbox(name))

    async def delete_folder(self, name: str) -> None:
        await self._command("DELETE", _mailbox(name))

    async def logout(self) -> None:
        """Say goodbye politely if the connection still works, then close it; never raises."""
        if self._closed is None:
            with contextlib.suppress(MailConnectionError, OSError):
                await self._command("LOGOUT", allow_failure=True)
            self._fail(MailConnectionError(ErrorKind.UNREACHABLE, "Logged out."))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self._writer.wait_closed()


_TOO_MANY_CONNECTIONS_RE = re.compile(
    r"too many (simultaneous |concurrent )?connections|maximum number of connections", re.IGNORECASE
)
TOO_MANY_CONNECTIONS = (
    "The mail server allows no more connections to this mailbox right now (other mail apps may "
    "hold them). Sync retries by itself."
)


def _too_many_connections(code: str | None, text: str) -> MailConnectionError | None:
    """Dovecot: ``NO [LIMIT] Maximum number of connections from user+IP exceeded``; Gmail: ``[ALERT]
    Too many simultaneous connections`` (as the LOGIN reply or a BYE)."""
    if _TOO_MANY_CONNECTIONS_RE.search(text):
        return MailConnectionError(
            ErrorKind.TOO_MANY_CONNECTIONS, TOO_MANY_CONNECTIONS, detail=f"[{code or ''}] {text}"
        )
    return None


def _append_message(raw: bytes, flags: Sequence[str], when: datetime | None) -> list[_Arg]:
    """One message's part of an APPEND: its flags, its internal date, its literal (checked)."""
    for flag in flags:
        if not _FLAG_RE.match(flag):
            raise ValueError(f"not an IMAP flag: {flag!r}")
    if not raw:
        raise ValueError("an empty message cannot be appended")
    if b"\x00" in raw:
        raise ValueError("a message literal must not contain NUL (RFC 3501 CHAR8)")
    args: list[_Arg] = [_atom("(" + " ".join(flags) + ")")]
    if when is not None:
        args.append(_internaldate_arg(when))
    args.append(_Literal(raw))
    return args


def _login_error(done: _Response) -> MailConnectionError:
    text = done.text
    lowered = text.lower()
    code = (done.code or "").upper()
    refused = _too_many_connections(done.code, text)
    if refused is not None:
        return refused
    if "imap" in lowered and any(
        w in lowered for w in ("disabled", "not enabled", "enable imap", "turned off")
    ):
        return MailConnectionError(
            ErrorKind.IMAP_DISABLED,
            (
                "IMAP access is turned off for this mailbox. Enable IMAP in your mail provider's "
                "settings, then try again."
            ),
            detail=text,
        )
    if code.startswith("UNAVAILABLE"):
        return MailConnectionError(
            ErrorKind.UNREACHABLE,
            "The mail server is temporarily unavailable. Sync will retry.",
            detail=text,
        )
    hint = (
        " Your provider may require an app password."
        if "app" in lowered and "password" in lowered
        else ""
    )
    return MailConnectionError(
        ErrorKind.AUTH_FAILED,
        "The mail server rejected the user name or password. Check them, or update the password if "
        f"you changed it at your provider.{hint}",
        detail=f"{done.kind} [{done.code or ''}] {text}",
    )


async def connect_imap(settings: ImapSettings) -> ImapClient:
    """Vet the host (R24), connect to the vetted address, secure the connection (R22) and log in."""
    if settings.tls == "plain" and not settings.allow_plaintext:
        raise MailConnectionError(
            ErrorKind.NOT_ALLOWED,
            (
                "Unencrypted IMAP connections are not allowed. Turn on SSL, or use a port that "
                "offers STARTTLS."
            ),
        )
    try:
        _refuse_controls(settings.username)
        _refuse_controls(settings.password)
        _refuse_controls(settings.access_token or "")
    except ValueError:
        raise MailConnectionError(
            ErrorKind.AUTH_FAILED, "The user name or password contains a line break. Re-enter them."
        ) from None
    host = await vet_host(
        settings.host, settings.allow_networks, resolver=settings.resolver, timeout=settings.timeout
    )
    context = (
        None
        if settings.tls == "plain"
        else client_tls_context(pinned_sha256=settings.pinned_sha256, cafile=settings.cafile)
    )
    implicit = settings.tls == "implicit"
    try:
        async with asyncio.timeout(settings.timeout):
            if implicit:
                reader, writer = await asyncio.open_connection(
                    host.address,
                    settings.port,
                    ssl=context,
                    server_hostname=host.hostname,
                    ssl_handshake_timeout=settings.timeout,
                    limit=_LINE_LIMIT,
                )
            else:
                reader, writer = await asyncio.open_connection(
                    host.address, settings.port, limit=_LINE_LIMIT
                )
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        raise connect_error(exc, host, settings.port) from None
    client = ImapClient(reader, writer, settings, host)
    try:
        await client._open(context)
    except BaseException:
        client._fail(MailConnectionError(ErrorKind.UNREACHABLE, "Connection set-up failed."))
        raise
    return client
