"""Building Smart Mail as MIME, and the guard in front of it (R16, R22, R23).

Python 3.11.7 predates the ``email`` fixes for header injection when
serialising (CVE-2024-6923) and address mis-parsing (CVE-2023-27043), so the
API is the guard: every header value is refused if it holds CR, LF, NUL or
another control character (C0 or C1, U+2028 and U+2029, all of which Python's
``str.splitlines`` takes for line ends), raw or inside an RFC 2047 encoded word
decoded with the charset it declares (``=?UTF-8?Q?=0A?=``, or UTF-7's
``=?UTF-7?Q?+AA0ACg-?=``); every address goes through ``email-validator``.  After
building, the message is serialised, parsed back and its headers compared with
the ones we meant to write; any difference refuses the message before it is
queued.  Bytes are serialised with CRLF line ends (``policy.SMTP``), so no
bare CR or LF reaches the wire (the SMTP channel also dot-stuffs and normalises).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import quopri
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.generator import BytesGenerator
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime
from html import escape as html_escape
from html import unescape as html_unescape
from io import BytesIO
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from leadline_kit.errors import InvalidEmailAddress
from leadline_mail.addresses import normalize_address
from leadline_send.problems import HeaderInjection, HeaderMismatch

_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")
_URL = re.compile(r"https?://[^\s<>\"')]+")
_HREF = re.compile(r"""(href\s*=\s*["'])(https?://[^"']+)(["'])""", re.IGNORECASE)
UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")


def check_header_value(field_name: str, value: str) -> str:
    """Refuse a header value carrying a line break or control character, also RFC 2047-encoded."""
    if _CONTROL.search(value):
        raise HeaderInjection(
            f"{field_name} contains a line break or control character", field=field_name
        )
    for match in _ENCODED_WORD.finditer(value):
        charset, encoding, text = (
            match.group(1).partition("*")[0],
            match.group(2).upper(),
            match.group(3),
        )
        try:
            raw = (
                base64.b64decode(text + "=" * (-len(text) % 4))
                if encoding == "B"
                else quopri.decodestring(text.replace("_", " ").encode(), header=True)
            )
            decoded = raw.decode(codecs.lookup(charset).name)
        except LookupError:
            raise HeaderInjection(
                f"{field_name} contains an encoded word in an unknown charset {charset!r}",
                field=field_name,
            ) from None
        except (binascii.Error, ValueError):
            raise HeaderInjection(
                f"{field_name} contains a malformed encoded word", field=field_name
            ) from None
        if _CONTROL.search(decoded):
            raise HeaderInjection(
                f"{field_name} contains an encoded line break or control character",
                field=field_name,
            )
    return value


def check_address(field_name: str, value: str) -> str:
    """The normalised address, or a 422 problem naming the field."""
    check_header_value(field_name, value)
    address = normalize_address(value)
    if address is None:
        raise InvalidEmailAddress(
            f"{field_name}: {value!r} is not a valid email address", field=field_name
        )
    return address


@dataclass(frozen=True)
class Recipient:
    address: str
    name: str = ""
    lead_id: uuid.UUID | None = None


@dataclass(frozen=True)
class AttachmentFile:
    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True)
class Draft:
    """What the caller asked for, validated; stored with the message to rebuild it for another
    account."""

    category: str
    to: tuple[Recipient, ...]
    cc: tuple[Recipient, ...] = ()
    bcc: tuple[Recipient, ...] = ()
    subject: str = ""
    text: str | None = None
    html: str | None = None
    attachments: tuple[AttachmentFile, ...] = ()

    @property
    def recipients(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(r.address)
        return list(seen)

    def to_json(self) -> dict[str, Any]:
        def people(rs: Sequence[Recipient]) -> list[dict[str, Any]]:
            return [
                {
                    "address": r.address,
                    "name": r.name,
                    "lead_id": str(r.lead_id) if r.lead_id else None,
                }
                for r in rs
            ]

        return {
            "category": self.category,
            "to": people(self.to),
            "cc": people(self.cc),
            "bcc": people(self.bcc),
            "subject": self.subject,
            "text": self.text,
            "html": self.html,
            "attachments": [
                {
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "content": base64.b64encode(a.content).decode(),
                }
                for a in self.attachments
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Draft:
        def people(rows: list[dict[str, Any]]) -> tuple[Recipient, ...]:
            return tuple(
                Recipient(
                    r["address"], r["name"], uuid.UUID(r["lead_id"]) if r["lead_id"] else None
                )
                for r in rows
            )

        return cls(
            category=data["category"],
            to=people(data["to"]),
            cc=people(data["cc"]),
            bcc=people(data["bcc"]),
            subject=data["subject"],
            text=data["text"],
            html=data["html"],
            attachments=tuple(
                AttachmentFile(a["filename"], a["content_type"], base64.b64decode(a["content"]))
                for a in data["attachments"]
            ),
        )


@dataclass(frozen=True)
class Sender:
    """Who the message goes out as, and the account's marketing settings (R15, R16)."""

    from_email: str
    from_name: str = ""
    return_path: str | None = None
    precedence: str | None = None
    unsubscribe_url: str | None = None
    utm: dict[str, str] = field(default_factory=dict)

    @property
    def envelope_from(self) -> str:
        return self.return_path or self.from_email


@dataclass(frozen=True)
class BuiltMessage:
    raw: bytes
    message_id: str
    envelope_from: str
    recipients: list[str]


def with_utm(url: str, utm: dict[str, str]) -> str:
    """The link with the account's UTM parameters added; parameters already on the link win."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {k for k, _ in query}
    query += [(k, v) for k, v in utm.items() if k in UTM_FIELDS and v and k not in present]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _tag_links(text: str, utm: dict[str, str], html: bool) -> str:
    if not utm:
        return text
    if html:
        # an href holds the URL HTML-escaped ("&amp;" between parameters): unescape, tag, escape
        # again
        return _HREF.sub(
            lambda m: (
                m.group(1) + html_escape(with_utm(html_unescape(m.group(2)), utm)) + m.group(3)
            ),
            text,
        )
    return _URL.sub(lambda m: with_utm(m.group(0), utm), text)


def _address(r: Recipient) -> Address:
    local, _, domain = r.address.rpartition("@")
    return Address(display_name=r.name, username=local, domain=domain)


def build_message(  # noqa: C901 - 13, older than the limit
    draft: Draft, sender: Sender, *, message_id: str, date: datetime, unsubscribe_link: str | None
) -> BuiltMessage:
    """Build, serialise and re-parse-check one message; raises Unprocessable if the check fails."""
    msg = EmailMessage(policy=SEVEN_BIT)
    intended: list[tuple[str, str]] = []

    def put(name: str, value: str | list[Address]) -> None:
        # An address header is stored as the text its addresses read back as (their str, comma
        # separated: headerregistry's own rule).  Given Address objects, the registry would join
        # them and parse that text anyway; given the text, the parse is the one the registry keeps
        # by text, which the read-back below then finds again when the header went out unfolded and
        # unencoded.
        text = value if isinstance(value, str) else ", ".join(map(str, value))
        msg[name] = text
        intended.append((name, text))

    sender_recipient = Recipient(sender.from_email, sender.from_name)
    put("From", [_address(sender_recipient)])
    if draft.to:
        put("To", [_address(r) for r in draft.to])
    if draft.cc:
        put("Cc", [_address(r) for r in draft.cc])
    put("Subject", draft.subject)
    put("Date", format_datetime(date))
    put("Message-ID", message_id)
    text, html = draft.text, draft.html
    if draft.category == "marketing":
        if text is None and html is None:
            text = ""  # still carries the unsubscribe link
        text = _tag_links(text, sender.utm, html=False) if text is not None else None
        html = _tag_links(html, sender.utm, html=True) if html is not None else None
        if sender.precedence:
            put("Precedence", sender.precedence)
        if unsubscribe_link:
            targets = [unsubscribe_link] + (
                [sender.unsubscribe_url] if sender.unsubscribe_url else []
            )
            put("List-Unsubscribe", ", ".join(f"<{t}>" for t in targets))
            put("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
            if text is not None:
                text += f"\n\nUnsubscribe: {unsubscribe_link}\n"
            if html is not None:
                html += f'\n<p><a href="{unsubscribe_link}">Unsubscribe</a></p>\n'
    msg.set_content(text if text is not None else "")
    if html is not None:
        if text is None:
            msg.clear_content()
            msg.set_content(html, subtype="html")
        else:
            msg.add_alternative(html, subtype="html")
    for attachment in draft.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        msg.add_attachment(
            attachment.content, maintype=maintype, subtype=subtype, filename=attachment.filename
        )
    raw = serialise(msg)
    _check_reparse(raw, intended)
    return BuiltMessage(
        raw=raw,
        message_id=message_id,
        envelope_from=sender.envelope_from,
        recipients=draft.recipients,
    )


class _FoldedAtCommas(BaseHeader):
    """``List-Unsubscribe`` (RFC 2369, RFC 8058): a list of ``<URI>`` that receivers read as it
    stands, so it is never RFC 2047-encoded (Gmail and Yahoo do not decode it); one that does not
    fit on a line is folded after the commas between its URIs, and nowhere else."""

    def fold(self, *, policy: Any) -> str:
        linesep: str = policy.linesep
        targets = _BETWEEN_URIS.split(str(self))
        line = f"{self.name}: {', '.join(targets)}"
        if len(line) <= WIRE_LINE:
            return line + linesep
        return f"{self.name}: " + f",{linesep} ".join(targets) + linesep


_BETWEEN_URIS = re.compile(r"(?<=>),\s*(?=<)")


class _WireFoldKept(BaseHeader):
    """A header's wire form, kept on the (immutable) header: the registry below hands the same
    header object to every message that repeats it (From, Date, the MIME headers), and folding a
    structured header re-walks its parse tree each time.

    A header made from printable ASCII text with no encoded word that fits on one line goes out as
    that text: the standard folder's answer for it, without walking the tree (the parse tree renders
    back to its source).  Whatever goes out is still read back and compared (_check_reparse).
    """

    def fold(self, *, policy: Any) -> str:
        if policy is not WIRE:
            return super().fold(policy=policy)
        folded: str | None = self.__dict__.get("_wire_fold")
        if folded is None:
            # the text it was made from (the registry)
            source: str | None = self.__dict__.get("_source")
            if source is not None and _one_plain_line(self.name, source):
                folded = f"{self.name}: {source}{WIRE.linesep}"
            else:
                folded = super().fold(policy=policy)
            self.__dict__["_wire_fold"] = folded
        return folded


def _one_plain_line(name: str, text: str) -> bool:
    """The header goes out as ``name: text`` on one line: printable ASCII, no encoded word, no
    surrounding space, within the wire's line length."""
    return (
        text.isascii()
        and text.isprintable()
        and "=?" not in text
        and text.strip() == text
        and len(name) + 2 + len(text) <= WIRE_LINE
    )


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC = rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_MAILBOX = rf"(?:{_ADDR_SPEC}|{_ATEXT}(?: {_ATEXT})* <{_ADDR_SPEC}>)"
# Values whose structured parse only gives back their text: a list of bare addresses or of plain
# names of atoms with an address, and a message id of atoms.  Such a value, on one line and with no
# encoded word, goes out as its text either way (test_composition compares it with the standard
# registry), so the header is made without the parse, the dearest part of building a message.
_PLAIN = {
    name: re.compile(pattern)
    for name, pattern in [
        *(
            (name, rf"{_MAILBOX}(?:, {_MAILBOX})*")
            for name in ("from", "to", "cc", "reply-to", "sender")
        ),
        ("message-id", rf"<{_ADDR_SPEC}>"),
    ]
}


class _KeptHeaderClasses(HeaderRegistry):
    """The standard registry makes a new header class with ``type()`` on every lookup, which was the
    largest single cost of building a message; the class for a name never changes, so keep it.  It
    also keeps the last parsed headers by name and text: headers are immutable, and the From, Date
    and MIME headers of a run of messages repeat (parsing an address list is the dearest part), and
    so does an unfolded header's read-back, which parses the same text it was built from.  A plain
    value (see _PLAIN) is not parsed at all."""

    def __init__(self) -> None:
        super().__init__()
        self._kept: dict[str, type[BaseHeader]] = {}
        self._plain = type("PlainHeader", (_WireFoldKept, UnstructuredHeader), {})
        self._parsed: dict[tuple[str, str], BaseHeader] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        kept = self._kept.get(key)
        if kept is None:
            standard = super().__getitem__(name)
            fold = _FoldedAtCommas if key == "list-unsubscribe" else _WireFoldKept
            kept = self._kept[key] = type(standard.__name__, (fold, standard), {})
        return kept

    def __call__(self, name: str, value: Any) -> BaseHeader:
        if not isinstance(value, str):
            return super().__call__(name, value)
        key = (name, value)
        parsed = self._parsed.get(key)
        if parsed is None:
            if len(self._parsed) >= 1024:
                self._parsed.clear()
            plain = _PLAIN.get(name.lower())
            if plain is not None and plain.fullmatch(value) and _one_plain_line(name, value):
                parsed = self._parsed[key] = self._plain(name, value)
            else:
                parsed = self._parsed[key] = super().__call__(name, value)
            parsed.__dict__["_source"] = value
        return parsed


WIRE_LINE = 78  # policy.SMTP's max_line_length (typed optional there)
_HEADERS = _KeptHeaderClasses()
# 7-bit clean bodies (quoted-printable or base64 for non-ASCII text): we do not ask the server for
# 8BITMIME, and every relay on the way can carry them.
SEVEN_BIT = policy.default.clone(cte_type="7bit", header_factory=_HEADERS)
READ_BACK = policy.default.clone(header_factory=_HEADERS)
WIRE = policy.SMTP.clone(header_factory=_HEADERS)


class _WireGenerator(BytesGenerator):
    """``BytesGenerator`` writing a text part's lines in one piece rather than two writes a line (a
    10 KB body was 270 calls), with every line end (CRLF, a bare CR or LF: the generator's NLCRE)
    made the policy's by ``str.replace``, three times as fast as splitting on the pattern; the bytes
    are the same (test_composition checks it)."""

    def _write_lines(self, lines: str) -> None:
        if lines:
            assert self.policy is not None  # flatten() sets the policy it writes with
            self.write(
                lines.replace("\r\n", "\n").replace("\r", "\n").replace("\n", self.policy.linesep)
            )


def serialise(msg: EmailMessage) -> bytes:
    """``msg.as_bytes(policy=WIRE)``, faster."""
    out = BytesIO()
    _WireGenerator(out, mangle_from_=False, policy=WIRE).flatten(msg)
    return out.getvalue()


_STRUCTURAL = {"mime-version", "content-type", "content-transfer-encoding", "content-disposition"}


def _check_reparse(raw: bytes, intended: list[tuple[str, str]]) -> None:
    # the header block alone: the parser would otherwise read through the whole body for nothing
    end = raw.find(b"\r\n\r\n")
    parsed = BytesHeaderParser(policy=READ_BACK).parsebytes(raw if end < 0 else raw[: end + 4])
    # only our headers are read through the header registry; the MIME structure ones are the
    # library's
    seen = [
        (name, str(READ_BACK.header_fetch_parse(name, value)))
        for name, value in parsed.raw_items()
        if name.lower() not in _STRUCTURAL
    ]
    if seen != intended:
        raise HeaderMismatch(
            "the message does not re-read as the headers it was built from; "
            "check names, subject and addresses for unusual characters",
        )
