"""Reading mail from other people's mailboxes: hostile input (R23, R27) that must never crash a
sync.

Two entry points, both total functions (they never raise):

* :func:`parse_headers` reads a raw header block (what the header scan
  fetches) into a :class:`HeaderSummary`: addresses validated and normalised
  with ``email-validator`` (:func:`leadline_mail.addresses.normalize_address`),
  invalid ones dropped.  Address headers are split by our own small scanner
  (quotes, comments, angle brackets, groups) instead of ``email.utils``,
  whose lenient parse on Python 3.11.7 mis-attributes crafted addresses
  (CVE-2023-27043); RFC 2047 encoded words are decoded only in display names
  and free text, never before addresses are located, so an encoded ``<`` or
  newline cannot forge an address or a header.  Control characters (CR, LF,
  NUL, ...) are removed from every decoded value.
* :func:`parse_message` reads a whole message into text, sanitised HTML
  (``nh3``), a snippet and attachment names and sizes.

Caps.  The stdlib parser is linear but builds every part in memory and
recurses once per nested multipart, so the input is cut *before* parsing at
``MAX_MESSAGE_BYTES``, at the ``MAX_BOUNDARY_LINES``-th ``--`` line and at the
``MAX_MULTIPARTS``-th ``boundary=`` parameter; parts deeper than
``MAX_DEPTH`` or beyond ``MAX_PARTS`` are not read, and walking stops after
``MAX_SECONDS`` of the parsing thread's CPU time (not the wall clock: a busy
machine must not cost a message its body).  Each cut adds a defect; the parse
still returns what it got.
A message whose structure cannot be parsed at all falls back to its headers
and its raw text.  ``defects`` is empty only for a message read completely.
"""

from __future__ import annotations

import email.header
import email.message
import email.parser
import email.policy
import email.utils
import functools
import html as html_lib
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import nh3

from leadline_mail.addresses import normalize_address

MAX_MESSAGE_BYTES = 25 * 1024 * 1024
MAX_HEADER_BYTES = 256 * 1024
MAX_HEADER_VALUE_CHARS = 64 * 1024
MAX_HEADER_BLOCK_BYTES = 1024 * 1024
# the stdlib parser takes ~10 µs a header line: 100,000 short lines would be seconds
MAX_HEADER_LINES = 2000
MAX_BOUNDARY_LINES = 2000
MAX_MULTIPARTS = 100
MAX_PARTS = 500
MAX_DEPTH = 20
MAX_SECONDS = 2.0
MAX_ADDRESSES = 1000
MAX_TEXT_CHARS = 1_000_000
MAX_HTML_CHARS = 2 * 1024 * 1024
SNIPPET_CHARS = 200

_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]+")
_SPACE_RE = re.compile(r"\s+")
_MSGID_RE = re.compile(r"<([^<>\s]{1,900})>")
_HEADER_END_RE = re.compile(rb"\r?\n\r?\n")
_FILENAME_BAD_RE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')

# The local parts mail systems send notices from; an IP-literal domain (postmaster@[192.0.2.1]) also
# counts.
SYSTEM_SENDER_RE = re.compile(
    r"^(mailer[-_.]?daemon|postmaster|post[-_.]master|mail[-_.]?daemon|mdaemon|microsoftexchange[0-9a-f]*|"
    r"mail[-_.]delivery[-_.]system|mail[-_.]?delivery[-_.]?subsystem|mailer|mail[-_.]?admin|maildelivery|"
    r"mail[-_.]?system|smtp[-_.]?gateway|bounces?|nobody|root|daemon|(?:no|do[-_.]?not)[-_.]?reply)@",
    re.IGNORECASE,
)
BOUNCE_SUBJECT_RE = re.compile(
    r"(undeliver|undelivered|delivery status|delivery failure|delivery has failed|delivery fail|"
    r"failure notice|returned mail|mail delivery failed|could not be delivered|nondeliverable|"
    r"non-deliverable|non-delivery|delivery notification|delivery problem|delivery error|"
    r"mail error|mail failure|not delivered|unable to deliver|delivery report|returned to sender|"
    r"rejected|warning: could not send|delayed mail|delivery delayed|message delayed|"
    r"mail system error|unzustellbar|nicht zustellbar|non remis|no se puede entregar|no entregado|"
    r"non recapitabile|onbestelbaar|エラー|不達|未達|退信|配信不能|失败|error sending|"
    r"failed delivery|mail returned|returned message)",
    re.IGNORECASE,
)
# complaints that come without a multipart/report: Microsoft's JMRP ("complaint about message from
# ...")
_RELAY_SENDER_RE = re.compile(r"mailer[-_ ]?daemon|postmaster|mail delivery", re.IGNORECASE)
FEEDBACK_SUBJECT_RE = re.compile(
    r"complaint about message|abuse report|feedback report|spam report", re.IGNORECASE
)
_IP_LITERAL_RE = re.compile(r"@\[[0-9a-f.:v]{2,45}\]$", re.IGNORECASE)


def is_system_sender(address: str) -> bool:
    """Whether an address is a mail system's own (a bounce comes from it, a lead never is it)."""
    return bool(SYSTEM_SENDER_RE.match(address)) or bool(_IP_LITERAL_RE.search(address))


# The header fields a HeaderSummary is made of, and all the header scan fetches (IMAP
# HEADER.FIELDS): parse_headers reads no other field, so what it gives from these alone is what it
# gives from a whole header.
SUMMARY_FIELDS = (
    "From",
    "To",
    "Cc",
    "Bcc",
    "Date",
    "Message-ID",
    "Subject",
    "In-Reply-To",
    "Content-Type",
    "Return-Path",
    "Auto-Submitted",
    "X-Failed-Recipients",
    "X-Apple-Unsubscribe",
)
_SUMMARY_NAMES = frozenset(name.lower() for name in SUMMARY_FIELDS)


@dataclass(frozen=True)
class HeaderSummary:
    message_id: str | None  # "<id@host>", brackets included, as senders generate it
    from_address: str | None
    from_name: str
    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str
    date: datetime | None  # timezone-aware (UTC when the header gave no zone)
    in_reply_to: str | None
    is_bounce_candidate: bool  # worth fetching whole and giving to bounces.parse_bounce


@dataclass(frozen=True)
class Attachment:
    """What the timeline shows of an attachment (its content is not kept).  A plain dataclass, not
    the event schema's model: the sync's parser processes import this module and not pydantic (19
    MiB each)."""

    filename: str | None
    content_type: str
    size: int


@dataclass(frozen=True)
class ParsedMessage:
    summary: HeaderSummary
    text: str
    html: str | None  # sanitised with nh3
    snippet: str
    attachments: list[Attachment]
    defects: list[str] = field(default_factory=list)
    size: int = 0


# --- header values -------------------------------------------------------------------------


def clean_text(value: str) -> str:
    """Control characters (CR, LF, NUL, ...) become spaces; runs of whitespace collapse."""
    return _SPACE_RE.sub(" ", _CONTROL_RE.sub(" ", value)).strip()


def header_text(value: object) -> str:
    """A header value from compat32: raw 8-bit bytes (surrogate-escaped by the parser) read as
    UTF-8."""
    if isinstance(value, email.header.Header):
        value = str(value)
    if not isinstance(value, str):
        return ""
    try:
        value.encode("ascii")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words (unknown charsets replaced, never an exception), then clean."""
    if "=?" not in value:
        return clean_text(value)
    try:
        chunks = email.header.decode_header(value)
    except Exception:  # any malformed encoded word: keep the raw text
        return clean_text(value)
    out: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
            continue
        out.append(_decode_bytes(chunk, charset))
    return clean_text("".join(out))


def _decode_bytes(data: bytes, charset: str | None) -> str:
    name = (charset or "utf-8").strip().lower()
    if name in {"unknown-8bit", "x-unknown", "us-ascii", "ascii"}:
        name = "utf-8"
    try:
        return data.decode(name, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def split_address_list(value: str) -> list[tuple[str, str]]:  # noqa: C901 - 21, older than the limit
    """``Name <a@b>, "Q, R" <c@d>, e@f, Group: g@h;`` → ``[(display name, address text), ...]``.

    A single pass over the raw (undecoded) header: quotes, backslash escapes,
    ``(comments)`` and ``<angle addresses>`` are tracked, so commas and
    colons inside them do not split.  The address text is not validated here.
    """
    results: list[tuple[str, str]] = []
    name: list[str] = []
    bare: list[str] = []
    angle: list[str] | None = None
    last_angle: str | None = None
    quoted = False
    comment = 0
    escaped = False

    def flush() -> None:
        nonlocal name, bare, angle, last_angle
        if last_angle is not None:
            results.append(("".join(name), last_angle))
        elif "".join(bare).strip():
            results.append(("", "".join(bare)))
        name, bare, angle, last_angle = [], [], None, None

    for char in value:
        if len(results) >= MAX_ADDRESSES:
            break
        if escaped:
            escaped = False
            (angle if angle is not None else name).append(char)
            bare.append(char)
            continue
        if char == "\\" and (quoted or comment):
            escaped = True
            continue
        if quoted:
            if char == '"':
                quoted = False
            else:
                (angle if angle is not None else name).append(char)
            bare.append(char)
            continue
        if comment:
            if char == "(":
                comment += 1
            elif char == ")":
                comment -= 1
            continue
        if char == '"':
            quoted = True
            bare.append(char)
        elif char == "(":
            comment = 1
        elif angle is not None:
            if char == ">":
                last_angle, angle = "".join(angle), None
            else:
                angle.append(char)
        elif char == "<":
            angle = []
        elif char in ",;":
            flush()
        elif char == ":" and last_angle is None:
            # "Group name:" — the text so far named a group, not an address
            name, bare = [], []
        else:
            name.append(char)
            bare.append(char)
    if angle is not None and last_angle is None:
        last_angle = "".join(angle)
    flush()
    return results


def parse_address_header(values: list[str]) -> list[tuple[str, str]]:
    """Every valid address in the given header values, normalised, with its decoded display name."""
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for value in values:
        for name, address in (
            _addresses_cached(value) if len(value) <= _CACHED_VALUE_CHARS else _addresses(value)
        ):
            if address in seen:
                continue
            seen.add(address)
            found.append((name, address))
    return found


def _addresses(value: str) -> tuple[tuple[str, str], ...]:
    """(decoded display name, normalised address) of each valid address of one header value, in
    order."""
    found = []
    for name, text in split_address_list(value):
        address = normalize_address(clean_text(text))
        if address is not None:
            found.append((decode_words(name.strip().strip('"')), address))
    return tuple(found)


# A mailbox's From and To values repeat (its correspondents, its owner): a header scan reads each
# once. Pure, and bounded in entries and in the length of a value cached (about 2 MB at most).
_CACHED_VALUE_CHARS = 500
_addresses_cached = functools.lru_cache(maxsize=4096)(_addresses)


def extract_message_id(value: str) -> str | None:
    """``<id@host>`` from a Message-ID / In-Reply-To value (the first one), brackets kept; None if
    absent."""
    token = clean_text(value)
    match = _MSGID_RE.search(token)
    if match:
        return f"<{match.group(1)}>"
    return (
        f"<{token}>" if token and " " not in token and "@" in token and len(token) <= 900 else None
    )


# The Date of nearly every message ("Mon, 23 Nov 2026 10:00:00 +0100", a zone comment after it or
# not), read without email.utils (a fifth of a header's summary); anything else, and "-0000", goes
# through email.utils, which gives the same for these (tests/test_mime.py compares them).
_DATE_RE = re.compile(
    r"(?:[A-Za-z]{3}, )?(\d{1,2}) ([A-Za-z]{3}) ([1-9]\d{3}) (\d{2}):(\d{2}):(\d{2}) "
    r"([+-])(\d{2})(\d{2})(?: \([^()]*\))?"
)
_MONTH_NUMBERS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}


def _date(value: str) -> datetime | None:
    if not value:
        return None
    text = clean_text(value)
    found = _DATE_RE.fullmatch(text)
    if found is not None:
        day, month, year, hour, minute, second, sign, zone_hours, zone_minutes = found.groups()
        number = _MONTH_NUMBERS.get(month.lower())
        if number is not None and (sign == "+" or zone_hours != "00" or zone_minutes != "00"):
            offset = timedelta(hours=int(zone_hours), minutes=int(zone_minutes))
            try:
                zone = timezone(-offset if sign == "-" else offset)
                return datetime(
                    int(year), number, int(day), int(hour), int(minute), int(second), tzinfo=zone
                )
            except ValueError:
                pass  # email.utils decides (it refuses these too)
    return _date_of_email_utils(text)


def _date_of_email_utils(text: str) -> datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _summarise(message: email.message.Message) -> HeaderSummary:
    # raw_items(): the values as received, before compat32 wraps 8-bit ones in Header objects
    return _summarise_items(message.raw_items())


def _summarise_items(items: Iterable[tuple[str, Any]]) -> HeaderSummary:
    headers: dict[str, list[str]] = {}
    for key, raw_value in items:
        name = key.lower()
        if name in _SUMMARY_NAMES:
            # a header block may be megabytes long in a whole message: a bounded prefix of each
            # value is read
            headers.setdefault(name, []).append(header_text(raw_value[:MAX_HEADER_VALUE_CHARS]))

    def values(name: str) -> list[str]:
        return headers.get(name) or []

    def first(name: str) -> str:
        found = headers.get(name)
        return found[0] if found else ""

    senders = parse_address_header(values("from"))
    from_name, from_address = senders[0] if senders else ("", None)
    subject = decode_words(first("subject"))
    content_type = first("content-type").lower()
    return_path = first("return-path")
    raw_from = first("from")
    auto_submitted = clean_text(first("auto-submitted")).lower()
    # Cheap to widen: a candidate is only fetched whole and read by bounces.parse_bounce, which
    # decides.
    is_bounce = (
        "multipart/report" in content_type
        or "delivery-status" in content_type
        or bool(from_address and is_system_sender(from_address))
        or bool(raw_from and from_address is None)  # "MAILER-DAEMON <>", a relay's bare name, "<>"
        or bool(_RELAY_SENDER_RE.search(raw_from))
        or bool(BOUNCE_SUBJECT_RE.search(subject))
        or (bool(return_path) and not clean_text(return_path).strip("<> "))  # null reverse-path <>
        or bool(first("x-failed-recipients"))
        or bool(auto_submitted and auto_submitted != "no")
        or bool(FEEDBACK_SUBJECT_RE.search(subject))
        or bool(first("x-apple-unsubscribe"))  # Apple Mail's unsubscribe mail
    )
    return HeaderSummary(
        message_id=extract_message_id(first("message-id")),
        from_address=from_address,
        from_name=from_name,
        to=[a for _, a in parse_address_header(values("to"))],
        cc=[a for _, a in parse_address_header(values("cc"))],
        bcc=[a for _, a in parse_address_header(values("bcc"))],
        subject=subject,
        date=_date(first("date")),
        in_reply_to=extract_message_id(replied) if (replied := first("in-reply-to")) else None,
        is_bounce_candidate=is_bounce,
    )


def _empty_summary() -> HeaderSummary:
    return HeaderSummary(None, None, "", [], [], [], "", None, None, False)


def parse_headers(header: bytes) -> HeaderSummary:
    """Summarise a raw header block (or a whole message: the body is ignored)."""
    try:
        block = header[:MAX_HEADER_BYTES].split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        block = block[: _line_end(block, MAX_HEADER_LINES)]
        return _summarise_items(header_items(block))
    except Exception:  # hostile input must not stop a sync; an empty summary matches no lead
        return _empty_summary()


# email.feedparser's own patterns: a line that can be in a header block, and a line break
_HEADER_LINE_RE = re.compile(r"^(From |[\041-\071\073-\176]*:|[\t ])")
_LINE_BREAK_RE = re.compile(r"(\r\n|\r|\n)")


def _header_lines(block: bytes) -> list[str]:
    """The lines of the header block, line breaks kept, up to the first that cannot be in one."""
    pieces = _LINE_BREAK_RE.split(block.decode("ascii", "surrogateescape"))
    lines = [pieces[i] + pieces[i + 1] for i in range(0, len(pieces) - 1, 2)]
    if pieces[-1]:
        lines.append(pieces[-1])
    for number, line in enumerate(lines):
        if not _HEADER_LINE_RE.match(line):
            # the end of the header block (an empty line), or a body without one
            return lines[:number]
    return lines


def header_items(block: bytes) -> list[tuple[str, str]]:
    """(name, raw value) of each header of a header block, exactly as ``email.parser.BytesParser``
    with ``compat32`` and ``headersonly`` gives them (``raw_items()``), without building a
    ``Message``: the header scan reads every message's header (tests/test_mime.py compares the
    two)."""
    block_lines = _header_lines(block)
    items: list[tuple[str, str]] = []
    name = ""  # the header being read, and its lines
    value_lines: list[str] = []

    def finish() -> None:
        first, rest = value_lines[0].split(":", 1)[1], value_lines[1:]
        items.append((name, (first.lstrip(" \t") + "".join(rest)).rstrip("\r\n")))

    for number, line in enumerate(block_lines):
        if line[0] in " \t":
            if name:
                value_lines.append(line)
            continue  # a continuation of no header: dropped, as the stdlib does
        if name:
            finish()
            name, value_lines = "", []
        if line.startswith("From "):
            if number == len(block_lines) - 1 and number:
                break  # the first line of a body
            continue  # a Unix envelope line, or one out of place: not a header
        colon = line.find(":")
        if colon == 0:
            continue  # no header name
        name, value_lines = line[:colon], [line]
    if name:
        finish()
    return items


# --- whole messages --------------------------------------------------------------------------


def _line_end(data: bytes, lines: int) -> int:
    """Where the first ``lines`` lines of ``data`` end (after their newline); ``len(data)`` if it
    has fewer."""
    at = 0
    for _ in range(lines):
        found = data.find(b"\n", at)
        if found < 0:
            return len(data)
        at = found + 1
    return at


def cut_to_caps(raw: bytes) -> tuple[bytes, list[str]]:
    """Cut the input where a cap is reached, before the stdlib parser sees it."""
    defects: list[str] = []
    data = raw
    if len(data) > MAX_MESSAGE_BYTES:
        data = data[:MAX_MESSAGE_BYTES]
        defects.append(f"message larger than {MAX_MESSAGE_BYTES} bytes: the rest was not read")
    end = _HEADER_END_RE.search(data, 0, MAX_HEADER_BLOCK_BYTES + 4)
    too_large = end is None and len(data) > MAX_HEADER_BLOCK_BYTES
    block_end = end.start() if end else min(len(data), MAX_HEADER_BLOCK_BYTES)
    if too_large or data.count(b"\n", 0, block_end) >= MAX_HEADER_LINES:
        cut = min(data.rfind(b"\n", 0, block_end) + 1, _line_end(data, MAX_HEADER_LINES))
        body_at = end or _HEADER_END_RE.search(data)
        data = data[:cut] + b"\r\n" + (data[body_at.end() :] if body_at else b"")
        defects.append(
            f"header block larger than {MAX_HEADER_BLOCK_BYTES} bytes or {MAX_HEADER_LINES} lines: "
            "the rest was not read"
        )
    for starts, cap, what in (
        (_boundary_params, MAX_MULTIPARTS, "multipart containers"),
        (_boundary_lines, MAX_BOUNDARY_LINES, "boundary lines"),
    ):
        for count, start in enumerate(starts(data), start=1):
            if count > cap:
                data = data[:start]
                defects.append(f"more than {cap} {what}: the rest was not read")
                break
    if b"\x00" in data:
        data = data.replace(b"\x00", b"")
        defects.append("NUL bytes removed")
    return data, defects


# whitespace looked through between "boundary" and "=": a slice, never a scan
_BOUNDARY_GAP_LIMIT = 256


def _boundary_params(data: bytes) -> Iterator[int]:
    """Where each ``boundary=`` parameter (any case, spaces before ``=``) starts.

    Found with ``bytes.find`` on a lowered copy: a case-insensitive regex over a message of base64
    attachments cost more than parsing it."""
    lowered = data.lower()
    at = lowered.find(b"boundary")
    while at >= 0:
        if lowered[at + 8 : at + 8 + _BOUNDARY_GAP_LIMIT].lstrip().startswith(b"="):
            yield at
        at = lowered.find(b"boundary", at + 8)


def _boundary_lines(data: bytes) -> Iterator[int]:
    """Where each line that starts with ``--`` starts (at its line break, or at 0)."""
    if data.startswith(b"--"):
        yield 0
    at = data.find(b"\n--", 1)
    while at >= 0:
        yield at
        at = data.find(b"\n--", at + 3)


def _snippet(text: str) -> str:
    """``clean_text(text)[:SNIPPET_CHARS]`` without cleaning all of a long text."""
    prefix = text[: SNIPPET_CHARS * 8]
    cleaned = clean_text(prefix)
    if len(cleaned) < SNIPPET_CHARS and len(text) > len(prefix):  # mostly whitespace: clean it all
        cleaned = clean_text(text)
    return cleaned[:SNIPPET_CHARS]


def _filename(part: email.message.Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        return None
    if not name:
        return None
    cleaned = _FILENAME_BAD_RE.sub("_", decode_words(header_text(name))).strip(" ._")
    return cleaned[:255] or None


def _serialised_size(part: email.message.Message) -> int:
    payload = part.get_payload()
    try:
        if isinstance(payload, list):
            return sum(len(p.as_bytes()) for p in payload if isinstance(p, email.message.Message))
        return len(payload) if isinstance(payload, str | bytes) else 0
    except Exception:  # a message that cannot be serialised again still gets listed
        return 0


def _payload_bytes(part: email.message.Message, defects: list[str]) -> bytes:
    try:
        payload = part.get_payload(decode=True)
    except Exception as exc:
        defects.append(f"undecodable part {part.get_content_type()}: {type(exc).__name__}")
        return b""
    if isinstance(payload, bytes):
        return payload
    return b""


def _part_text(part: email.message.Message, defects: list[str]) -> str:
    data = _payload_bytes(part, defects)
    charset = part.get_content_charset() or "utf-8"
    try:
        text = data.decode(charset, "replace")
    except LookupError:
        defects.append(f"unknown charset {charset[:40]!r}")
        text = data.decode("utf-8", "replace")
    return text.replace("\x00", "")


def html_to_text(markup: str) -> str:
    """Visible text of an HTML body (scripts and styles dropped), whitespace collapsed."""
    stripped = nh3.clean(
        markup, tags=set(), clean_content_tags={"script", "style", "head", "title"}
    )
    return _SPACE_RE.sub(" ", html_lib.unescape(stripped)).strip()


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse a whole message; never raises.  See the module docstring for the caps."""
    try:
        return _parse_message(raw)
    except Exception as exc:  # a bug or an input we did not foresee: keep what the headers say
        text = raw[:MAX_TEXT_CHARS].decode("utf-8", "replace").replace("\x00", "")
        body = text.split("\r\n\r\n", 1)[-1] if "\r\n\r\n" in text else text.split("\n\n", 1)[-1]
        return ParsedMessage(
            summary=parse_headers(raw),
            text=body,
            html=None,
            snippet=clean_text(body)[:SNIPPET_CHARS],
            attachments=[],
            defects=[f"unparseable message: {type(exc).__name__}"],
            size=len(raw),
        )


def _parse_message(raw: bytes) -> ParsedMessage:  # noqa: C901 - 15, older than the limit
    started = time.thread_time()
    data, defects = cut_to_caps(raw)
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(data)
    summary = _summarise(message)
    texts: list[str] = []
    html: str | None = None
    attachments: list[Attachment] = []
    seen_defects: set[str] = set()
    visited: list[email.message.Message] = []
    stack: list[tuple[email.message.Message, int]] = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        visited.append(part)
        if len(visited) > MAX_PARTS:
            defects.append(f"more than {MAX_PARTS} parts: the rest was not read")
            break
        if time.thread_time() - started > MAX_SECONDS:
            defects.append(f"parsing took over {MAX_SECONDS} s: the rest was not read")
            break
        content_type = part.get_content_type()
        if content_type.startswith("message/"):
            # an attached or bounced message: its text is not this message's text
            attachments.append(
                Attachment(
                    filename=_filename(part),
                    content_type=content_type[:255],
                    size=_serialised_size(part),
                )
            )
            continue
        if part.is_multipart():
            if depth >= MAX_DEPTH:
                defects.append(f"parts nested deeper than {MAX_DEPTH} levels were not read")
                continue
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend(
                    (child, depth + 1)
                    for child in reversed(children)
                    if isinstance(child, email.message.Message)
                )
            continue
        disposition = (part.get_content_disposition() or "").lower()
        filename = _filename(part)
        is_body = disposition != "attachment" and filename is None
        if is_body and content_type == "text/plain":
            if sum(len(t) for t in texts) < MAX_TEXT_CHARS:
                texts.append(_part_text(part, defects))
            continue
        if is_body and content_type == "text/html" and html is None:
            markup = _part_text(part, defects)
            if len(markup) > MAX_HTML_CHARS:
                markup = markup[:MAX_HTML_CHARS]
                defects.append(f"HTML body larger than {MAX_HTML_CHARS} characters was cut")
            html = nh3.clean(markup)
            continue
        if content_type.startswith("multipart/"):
            # boundaries not found: the parser left the body as text; keep it readable (defects say
            # why)
            texts.append(_part_text(part, defects))
            continue
        attachments.append(
            Attachment(
                filename=filename,
                content_type=content_type[:255],
                size=len(_payload_bytes(part, defects)),
            )
        )
    text = "\n".join(t.strip("\r\n") for t in texts)[:MAX_TEXT_CHARS]
    if not text and html:
        text = html_to_text(html)[:MAX_TEXT_CHARS]
    for part in visited:  # after decoding: get_payload(decode=True) records its own defects
        seen_defects.update(type(defect).__name__ for defect in getattr(part, "defects", []))
    defects.extend(sorted(seen_defects))
    return ParsedMessage(
        summary=summary,
        text=text,
        html=html,
        snippet=_snippet(text),
        attachments=attachments,
        defects=defects,
        size=len(raw),
    )
