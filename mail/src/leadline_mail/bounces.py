"""Recognising bounces (R17): which of our messages failed, for whom, and why.

Formats, tried in this order:

1. RFC 3464 delivery status notifications: ``multipart/report;
   report-type=delivery-status`` holding a ``message/delivery-status`` part
   (per-message fields, then one block per recipient with ``Final-Recipient``,
   ``Action``, ``Status``, ``Diagnostic-Code``) and the original as
   ``message/rfc822`` or ``text/rfc822-headers``.  Postfix, Gmail, Office 365
   and most modern servers send this.
2. Plain-text notices from ``MAILER-DAEMON``/``postmaster``/Exchange or with a
   bounce subject (Exim "Mail delivery failed", qmail "failure notice",
   Postfix, Office 365 "Undeliverable", Gmail "Delivery Status
   Notification"): the failed recipient comes from ``X-Failed-Recipients``
   or the body's recipient line, the status and diagnostic from the quoted
   SMTP reply, and the original Message-ID from the attached or quoted
   original headers.

Only permanent failures are bounces: a DSN whose recipients were delivered,
relayed, expanded or only delayed returns None, so a "still trying" warning
never marks a message bounced.  Input is hostile (R27): the same caps as
:mod:`leadline_mail.mime` apply and nothing here raises.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import re
from dataclasses import dataclass

from leadline_mail.addresses import normalize_address
from leadline_mail.mime import (
    BOUNCE_SUBJECT_RE,
    MAX_PARTS,
    SYSTEM_SENDER_RE,
    clean_text,
    cut_to_caps,
    extract_message_id,
    header_text,
    html_to_text,
    parse_headers,
)

MAX_DIAGNOSTIC_CHARS = 1000

_STATUS_RE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_SMTP_CODE_RE = re.compile(r"(?<![\d.])([45]\d\d)(?:[ :-]|$)", re.MULTILINE)
# Every pattern below runs on hostile text: quantifiers are bounded and classes do not overlap around
# their anchors, so matching stays linear (no catastrophic backtracking on crafted input).
_ADDR = r"[^\s<>@\"()]{1,64}@[^\s<>@\"()]{1,255}"
_ADDRESS_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,255}")
_MSGID_LINE_RE = re.compile(r"^message-id:[ \t]*(.+)$", re.IGNORECASE | re.MULTILINE)
_DELAY_RE = re.compile(
    r"delivery (?:is )?delayed|will (?:continue|keep) trying|has not yet been delivered|not been delivered yet|"
    r"still trying|warning only",
    re.IGNORECASE,
)
_ORIGINAL_MARKERS = re.compile(
    r"copy of the message|below this line is a copy|original message|undelivered message|"
    r"message headers follow|returned message",
    re.IGNORECASE,
)
_RECIPIENT_LINES = (
    re.compile(r"following address(?:es|\(es\))? failed:[ \t]*\n\s{0,40}<?(" + _ADDR + ")", re.I),  # Exim
    re.compile(r"^<(" + _ADDR + ")>:", re.MULTILINE),  # qmail, Postfix
    re.compile(r"delivery has failed to these recipients or groups:\s{0,40}[^\n<]{0,200}<?(" + _ADDR + ")", re.I),
    re.compile(r"wasn't delivered to\s{1,5}<?(" + _ADDR + ")", re.I),  # Gmail
    re.compile(r"(?:could not be delivered to|couldn't be delivered to|delivery to)\s{1,5}<?(" + _ADDR + ")",
               re.I),
)
_DIAGNOSTIC_RES = (
    re.compile(r"remote server returned '([^'\n]{1,1000})'", re.I),  # Office 365
    re.compile(r"remote host said:[ \t]*(.+)", re.I),  # qmail
    re.compile(r"said:[ \t]*(.+)", re.I),  # Postfix
    re.compile(r"^[ \t]*((?:550|551|552|553|554|450|451|452|421)[ :-].+)$", re.MULTILINE),  # Exim, Yahoo
    re.compile(r"the response (?:from the remote server )?was:\s{0,10}(\S.*)", re.I),  # Gmail
)
MAX_NOTICE_CHARS = 50_000


@dataclass(frozen=True)
class Bounce:
    original_message_id: str | None  # "<id@host>" of the message that bounced
    recipient: str | None  # normalised address that failed
    status: str  # enhanced status code, e.g. "5.1.1"
    action: str  # "failed"
    diagnostic: str  # the remote server's reply, for the timeline and the sender


def parse_bounce(raw: bytes) -> Bounce | None:
    """The bounce this message reports, or None if it is not a (permanent) bounce; never raises."""
    try:
        data, _ = cut_to_caps(raw)
        message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(data)
        parts = _leaf_parts(message)
        report = _from_delivery_status(message, parts)
        if report is not None:
            return report if report.action == "failed" else None
        return _from_plain_text(message, parts)
    except Exception:  # hostile input: not recognisable as a bounce
        return None


def _leaf_parts(message: email.message.Message) -> list[email.message.Message]:
    """Every part, ``message/*`` parts kept whole (not descended into), at most MAX_PARTS."""
    found: list[email.message.Message] = []
    stack = [message]
    while stack and len(found) < MAX_PARTS:
        part = stack.pop()
        found.append(part)
        content_type = part.get_content_type()
        if part.is_multipart() and not content_type.startswith("message/"):
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(p for p in reversed(payload) if isinstance(p, email.message.Message))
    return found


def _header_blocks(part: email.message.Message) -> list[email.message.Message]:
    """The header blocks of a message/delivery-status part (compat32 parses each block as a Message)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, email.message.Message)]
    text = payload if isinstance(payload, str) else ""
    parser = email.parser.Parser(policy=email.policy.compat32)
    return [parser.parsestr(block, headersonly=True) for block in re.split(r"\r?\n\s*\r?\n", text) if block]


def _typed_value(value: str) -> str:
    """``rfc822; user@example.com`` → ``user@example.com``; ``smtp; 550 ...`` → ``550 ...``."""
    _, sep, rest = value.partition(";")
    return clean_text(rest if sep else value)


def _original_message_id(parts: list[email.message.Message], body_text: str) -> str | None:
    for part in parts:
        content_type = part.get_content_type()
        if content_type in {"message/rfc822", "message/global"}:
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], email.message.Message):
                found = extract_message_id(header_text(payload[0].get("message-id", "")))
                if found:
                    return found
        elif content_type in {"text/rfc822-headers", "message/rfc822-headers", "text/global-headers"}:
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                found = parse_headers(payload).message_id
                if found:
                    return found
    match = _ORIGINAL_MARKERS.search(body_text)
    quoted = body_text[match.end():] if match else body_text
    for line in _MSGID_LINE_RE.finditer(quoted):
        found = extract_message_id(line.group(1))
        if found:
            return found
    return None


def _referenced_message_id(message: email.message.Message, per_message: list[email.message.Message]) -> str | None:
    """When the original is not attached: Gmail's ``X-Original-Message-ID`` in the report, or the
    notice's own ``In-Reply-To`` (Gmail and Office 365 set it to the bounced message)."""
    for block in per_message:
        found = extract_message_id(header_text(block.get("x-original-message-id", "")))
        if found:
            return found
    return extract_message_id(header_text(message.get("in-reply-to", "")))


def _body_text(parts: list[email.message.Message]) -> str:
    texts: list[str] = []
    for part in parts:
        content_type = part.get_content_type()
        if content_type not in {"text/plain", "text/html"} or part.get_filename():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        try:
            text = payload.decode(part.get_content_charset() or "utf-8", "replace")
        except LookupError:
            text = payload.decode("utf-8", "replace")
        texts.append(html_to_text(text) if content_type == "text/html" else text)
    return "\n".join(texts).replace("\r\n", "\n")[:MAX_NOTICE_CHARS]


def _from_delivery_status(
    message: email.message.Message, parts: list[email.message.Message]
) -> Bounce | None:
    status_part = next((p for p in parts if p.get_content_type() in {"message/delivery-status",
                                                                     "message/global-delivery-status"}), None)
    if status_part is None:
        return None
    blocks = _header_blocks(status_part)
    recipients = [b for b in blocks[1:] if b.get("final-recipient") or b.get("original-recipient")]
    if not recipients:
        recipients = [b for b in blocks if b.get("action") or b.get("status")]
    if not recipients:
        return None
    failed = [b for b in recipients if _typed_value(header_text(b.get("action", ""))).lower() == "failed"]
    chosen = failed[0] if failed else recipients[0]
    action = _typed_value(header_text(chosen.get("action", ""))).lower()
    status = _typed_value(header_text(chosen.get("status", "")))
    status_match = _STATUS_RE.search(status)
    status = status_match.group(1) if status_match else status[:32]
    if not action:
        action = "failed" if status.startswith("5") else "delayed"
    recipient_text = _typed_value(header_text(chosen.get("final-recipient") or chosen.get("original-recipient") or ""))
    diagnostic = _typed_value(header_text(chosen.get("diagnostic-code", "")))
    body = _body_text(parts)
    return Bounce(
        original_message_id=_original_message_id(parts, body) or _referenced_message_id(message, blocks[:1]),
        recipient=normalize_address(recipient_text),
        status=status or "5.0.0",
        action=action,
        diagnostic=(diagnostic or _diagnostic(body))[:MAX_DIAGNOSTIC_CHARS],
    )


def _looks_like_bounce(message: email.message.Message) -> bool:
    """Stricter than ``HeaderSummary.is_bounce_candidate``: a person's mail titled "Undeliverable
    parcel" that quotes an address must stay a person's mail.  A plain-text notice counts only when a
    mail system sent it: a system sender, a null Return-Path, ``X-Failed-Recipients``, or a bounce
    subject on an auto-submitted message."""
    if message.get("x-failed-recipients"):
        return True
    return_path = message.get_all("return-path") or []
    if any(not clean_text(header_text(v)).strip("<> ") for v in return_path):
        return True
    summary = parse_headers(b"".join(
        f"{key}: {header_text(value)}\r\n".encode("utf-8", "replace")
        for key, value in message.raw_items() if key.lower() in {"from", "subject"}
    ))
    if summary.from_address and SYSTEM_SENDER_RE.match(summary.from_address):
        return True
    auto = clean_text(header_text(message.get("auto-submitted", ""))).lower()
    return bool(auto and auto != "no" and BOUNCE_SUBJECT_RE.search(summary.subject))


def _diagnostic(text: str) -> str:
    for pattern in _DIAGNOSTIC_RES:
        match = pattern.search(text)
        if match:
            return clean_text(match.group(1))
    return ""


def _from_plain_text(message: email.message.Message, parts: list[email.message.Message]) -> Bounce | None:
    if not _looks_like_bounce(message):
        return None
    body = _body_text(parts)
    marker = _ORIGINAL_MARKERS.search(body)
    notice = body[: marker.start()] if marker else body
    if _DELAY_RE.search(notice):
        return None
    recipient = _failed_recipient(message, notice)
    diagnostic = _diagnostic(notice)
    status_match = _STATUS_RE.search(diagnostic) or _STATUS_RE.search(notice)
    if status_match:
        status = status_match.group(1)
    else:
        code = _SMTP_CODE_RE.search(diagnostic) or _SMTP_CODE_RE.search(notice)
        status = f"{code.group(1)[0]}.0.0" if code else "5.0.0"
    if status.startswith("4") and "permanent" not in notice.lower():
        return None  # a temporary failure the server keeps retrying
    original = _original_message_id(parts, body) or _referenced_message_id(message, [])
    if recipient is None and original is None:
        return None  # nothing to attribute: an auto-reply or a notice of another kind
    return Bounce(
        original_message_id=original,
        recipient=recipient,
        status=status,
        action="failed",
        diagnostic=diagnostic[:MAX_DIAGNOSTIC_CHARS],
    )


def _failed_recipient(message: email.message.Message, notice: str) -> str | None:
    for value in message.get_all("x-failed-recipients") or []:
        for candidate in header_text(value).split(","):
            address = normalize_address(clean_text(candidate))
            if address:
                return address
    for pattern in _RECIPIENT_LINES:
        match = pattern.search(notice)
        if match:
            address = normalize_address(match.group(1).strip("<>:,. "))
            if address:
                return address
    for match in _ADDRESS_RE.finditer(notice):
        address = normalize_address(match.group(0).rstrip("."))
        if address and not SYSTEM_SENDER_RE.match(address):
            return address
    return None
