"""Recognising bounces (R17): which of our messages failed, for whom, hard or soft, and why.

A notice is read in this order:

1. RFC 3464 delivery status fields (``Final-Recipient``, ``Original-Recipient``, ``Action``,
   ``Status``, ``Diagnostic-Code``): from the ``message/delivery-status`` part, or, when the parser
   did not split the ``multipart/report`` (a missing or wrong boundary, a status part without its
   blank line), from the raw body.  Postfix, Gmail, Office 365 and most modern servers send them.
2. Otherwise a plain-text notice, believed only when a mail system sent it (a system sender such as
   ``MAILER-DAEMON``, ``MAILER-DAEMON <>``, ``postmaster@[192.0.2.1]``, ``Mail.Delivery.System@``, a
   null Return-Path, ``X-Failed-Recipients``, or a bounce subject on an automatic message or one
   that returns the original): the failed recipients come from ``X-Failed-Recipients`` and the MTA's
   own recipient lines, the status from the quoted SMTP reply, the original Message-ID from the
   attached or quoted original.

Every notice gets a class: ``hard`` (5.x.x, the message will not arrive) or ``soft`` (4.x.x,
``Action: delayed``, "still trying"), and a reason from a small fixed set.  DSNs that only report
delivery (``delivered``, ``relayed``, ``expanded``), read receipts (RFC 8098) and auto-replies
(RFC 3834) are not bounces.

Who bounced is decided by :meth:`Bounce.lead_recipient`: the failed recipients first, then the
returned original's ``To``/``Cc``, each only if it is a lead and never the mailbox's own address or
the original's sender.  A notice that names no lead but returns the original's Message-ID is still
worth telling: the sender of that message knows its recipients.

Complaints are read apart (:class:`Complaint`): an RFC 5965 feedback report (ARF,
``multipart/report; report-type=feedback-report``) of type ``abuse``, ``fraud``, ``other`` or
``opt-out``, Microsoft's JMRP report (the original attached with ``X-HmXmrOriginalRecipient``),
Amazon SES's JSON notification (``"notificationType": "Complaint"``) and Apple Mail's unsubscribe
mail (``X-Apple-Unsubscribe: true``).  Who complained comes from ``Original-Rcpt-To`` /
``Removal-Recipient`` (or the report's own field), then the returned original's ``To``.  Feedback
reports of other types (``auth-failure``, ``not-spam``, ``virus``) are neither complaints nor
bounces.

Input is hostile (R27): the caps of :mod:`leadline_mail.mime` apply, text patterns are bounded, and
nothing here raises.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import logging
import re
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from leadline_mail.addresses import normalize_address
from leadline_mail.mime import (
    BOUNCE_SUBJECT_RE,
    MAX_DEPTH,
    MAX_PARTS,
    MAX_SECONDS,
    clean_text,
    cut_to_caps,
    decode_words,
    extract_message_id,
    header_text,
    html_to_text,
    is_system_sender,
    parse_address_header,
    parse_headers,
)
from leadline_proto.events import BounceReason as Reason
from leadline_proto.events import BounceSeverity as Severity
from leadline_proto.events import ComplaintFeedbackType as FeedbackType

log = logging.getLogger("leadline.mail.bounces")

MAX_DIAGNOSTIC_CHARS = 1000
MAX_NOTICE_CHARS = 50_000
# what a notice says (its text, status fields, the original's headers) comes first; the stdlib
# parser takes ~0.5 ms per status block, so 10,000 crafted ones would be seconds: the rest is not
# parsed
MAX_NOTICE_BYTES = 256 * 1024
MAX_RECIPIENTS = 50

_STATUS_RE = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.]\d)")
_SMTP_CODE_RE = re.compile(r"(?<![\d.\w])([45][0-5]\d)(?:[ :-]|$)", re.MULTILINE)
# Every pattern below runs on hostile text: quantifiers are bounded and classes do not overlap
# around their anchors, so matching stays linear (no catastrophic backtracking on crafted input).
_ADDRESS_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,8}"
)
_MSGID_LINE_RE = re.compile(
    r"^[ \t>]{0,4}message-id:[ \t]*(.{1,1000})$", re.IGNORECASE | re.MULTILINE
)
_HEADER_LINE_RE = re.compile(
    r"^[ \t>]{0,4}(to|cc|from):[ \t]*(.{1,2000})$", re.IGNORECASE | re.MULTILINE
)
_DSN_FIELD_RE = re.compile(
    r"^(final-recipient|original-recipient|action|status|diagnostic-code|x-original-message-id)"
    r"[ \t]{0,4}:[ \t]*(.{0,1000})$",
    re.IGNORECASE | re.MULTILINE,
)
_DELAY_RE = re.compile(
    r"delivery (?:is |has been )?delayed|delayed mail|delay(?:ed)? notification|will (?:continue|"
    r"keep) (?:trying|to try|retrying)|will be retried|still (?:trying|being retried)|"
    r"has not yet been delivered|not been delivered yet|warning only|warning: (?:message|"
    r"could not)|temporar(?:y|ily) (?:failure|error|unavailable|deferred|rejected)|deferred|"
    r"retry (?:again )?later|try again later|in the queue|no action is required",
    re.IGNORECASE,
)
_PERMANENT_RE = re.compile(
    r"permanent(?:ly)?|fatal error|gave up|giving up|will not be (?:retried|delivered)|"
    r"could not be delivered|not be delivered|delivery (?:has )?failed|undeliverable|"
    r"failed permanently|returned to sender|returning message",
    re.IGNORECASE,
)
_ORIGINAL_MARKERS = re.compile(
    r"copy of (?:the|your) (?:original )?message|below this line is a copy|"
    r"original message(?! was received)|undelivered message|"
    r"message headers follow|headers? of the (?:original|returned) message|returned message|"
    r"unsent message below|original message headers|^content-type:[ \t]*(?:message/rfc822|"
    r"text/rfc822-headers)|^-{2,} ?(?:original|returned|undelivered) (?:message|mail)|"
    r"the header of the original|message is attached|^Received: from ",
    re.IGNORECASE | re.MULTILINE,
)
_AUTO_REPLY_SUBJECT_RE = re.compile(
    r"out of (?:the )?office|vacation|auto(?:matic)?[ -]?(?:reply|response|antwort|respuesta)|"
    r"absence|abwesen|away from|on leave|holiday|congés|\bOOO\b|不在|自動返信|自动回复|autoreply",
    re.IGNORECASE,
)
_REASONS: tuple[tuple[Reason, re.Pattern[str]], ...] = (
    (
        "mailbox_full",
        re.compile(
            r"\b[45]\.2\.2\b|mailbox (?:is )?full|over ?quota|quota exceeded|exceeded (?:the |"
            r"their |its )?(?:storage|quota)|insufficient (?:disk|storage)|disk quota|mailbox "
            r"size limit|storage limit|full mailbox|容量|一杯",
            re.I,
        ),
    ),
    (
        "message_too_large",
        re.compile(
            r"\b5\.3\.4\b|\b[45]\.2\.3\b|too (?:large|big)|size (?:limit|exceeds)|exceeds "
            r"(?:the )?(?:maximum )?(?:message )?size|message size",
            re.I,
        ),
    ),
    (
        "spam",
        re.compile(
            r"spam|\b5\.7\.1 .{0,40}content|junk mail|bulk mail|blacklist|blocklist|listed (?:at|"
            r"on|in)|\brbl\b|dnsbl|virus|malware|\b[45]\.6\.0\b",
            re.I,
        ),
    ),
    (
        "user_unknown",
        re.compile(
            r"\b[45]\.1\.(?:1|0|10|6)\b|\b[45]\.2\.1\b|user (?:is )?unknown|unknown (?:user|"
            r"recipient|local|mailbox|address)|no such (?:user|mailbox|recipient|address|person)|"
            r"(?:user|mailbox|recipient|address|account)(?: name)? (?:does not|doesn't|did not) "
            r"exist|does not exist|not found|invalid (?:recipient|mailbox|address|user)|"
            r"(?:user|mailbox|recipient|account) (?:is )?(?:unavailable|disabled|inactive|"
            r"suspended|not (?:available|found|known|listed))|address rejected|not a valid|"
            r"no mailbox|bad destination mailbox|has moved|unrouteable address|"
            r"recipient rejected|no longer|user not|account (?:has been )?(?:expired|closed)",
            re.I,
        ),
    ),
    (
        "host_unknown",
        re.compile(
            r"\b[45]\.1\.2\b|\b[45]\.4\.4\b|host (?:or domain name )?not found|unknown host|"
            r"host unknown|domain (?:not found|does not exist)|no (?:mx|such domain|route)|"
            r"name (?:or service )?not known|unrouteable|nxdomain|dns",
            re.I,
        ),
    ),
    (
        "expired",
        re.compile(
            r"\b[45]\.4\.7\b|expired|timed? ?out|too long|retry time|gave up|giving up|"
            r"could not be delivered within|queue lifetime|delivery time",
            re.I,
        ),
    ),
    (
        "policy",
        re.compile(
            r"\b[45]\.7\.\d{1,3}\b|polic|blocked|denied|prohibited|not (?:allowed|permitted|"
            r"authori[sz]ed)|relay|rejected|refused|dmarc|spf|dkim|reverse|ptr|reputation|"
            r"authenticat",
            re.I,
        ),
    ),
)


class _AboutOriginal:
    """A notice about one of our messages: who it names, and whom the returned original went to."""

    recipients: tuple[str, ...]
    original_to: tuple[str, ...]
    original_from: str | None

    @property
    def recipient(self) -> str | None:
        return self.recipients[0] if self.recipients else None

    def lead_recipient(
        self, is_lead: Callable[[str], bool], own_addresses: Collection[str]
    ) -> str | None:
        """The lead this notice is about: one it names, else one the original was sent to."""
        excluded = {*own_addresses, *((self.original_from,) if self.original_from else ())}
        for address in (*self.recipients, *self.original_to):
            if address not in excluded and not is_system_sender(address) and is_lead(address):
                return address
        return None


@dataclass(frozen=True)
class Bounce(_AboutOriginal):
    original_message_id: str | None  # "<id@host>" of the message that bounced
    recipients: tuple[str, ...]  # normalised addresses the notice says failed, best first
    status: str  # enhanced status code, e.g. "5.1.1"
    action: str  # "failed" or "delayed"
    severity: Severity
    reason: Reason
    diagnostic: str  # the remote server's reply, for the timeline and the sender
    original_to: tuple[str, ...] = ()  # To and Cc of the returned original, when it came back
    original_from: str | None = None


@dataclass(frozen=True)
class Complaint(_AboutOriginal):
    """A recipient reported one of our messages as spam, or asked off the list, through a feedback
    channel."""

    original_message_id: str | None
    # who complained, as the report states it (often redacted), best first
    recipients: tuple[str, ...]
    feedback_type: FeedbackType
    reporter: str  # who sent the report: its User-Agent, else the sender's domain
    original_to: tuple[str, ...] = ()
    original_from: str | None = None


def parse_notice(raw: bytes) -> Bounce | Complaint | None:
    """The bounce or complaint this message reports, or None if it is neither; never raises."""
    try:
        data, cuts = cut_to_caps(raw[:MAX_NOTICE_BYTES])
        if len(raw) > MAX_NOTICE_BYTES:
            cuts.append(f"larger than {MAX_NOTICE_BYTES} bytes: the rest was not read")
        if data.lower().count(b"message/rfc822") > MAX_DEPTH:
            cuts.append(f"more than {MAX_DEPTH} returned messages: only the first is read")
        if cuts:
            log.warning("a delivery notice was read in part (R27): %s", "; ".join(cuts))
        message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(data)
        return _Notice(message, data).read()
    except Exception as exc:  # hostile input: not recognisable as a notice; skipped, never a crash
        log.warning(
            "a delivery notice could not be read (%s); it is not treated as one", type(exc).__name__
        )
        return None


def parse_bounce(raw: bytes) -> Bounce | None:
    """The bounce this message reports, or None if it is not a bounce; never raises."""
    notice = parse_notice(raw)
    return notice if isinstance(notice, Bounce) else None


class _Notice:
    """One parsed notice: its parts, its own text (without the returned original) and the
    original."""

    def __init__(self, message: email.message.Message, data: bytes) -> None:
        self.message = message
        self.data = data
        self.parts = _leaf_parts(message)
        self.body = _body_text(self.parts)
        if not self.body.strip() or (
            message.get_content_type().startswith("multipart/")
            and not any(p.get_content_type() in _STATUS_TYPES for p in self.parts)
            and b"-recipient:" in data.lower()
        ):
            # a multipart the parser did not split (or that holds no text): read the raw body
            self.body = _raw_body(data)
        marker = _ORIGINAL_MARKERS.search(self.body)
        self.notice = self.body[: marker.start()] if marker else self.body
        self.quoted = self.body[marker.end() :] if marker else ""

    def read(self) -> Bounce | Complaint | None:
        feedback = self._feedback_fields()
        if feedback is not None:
            return self._complaint(feedback)
        if _SES_DELIVERY_RE.search(self.body[:2000]) or self._is_read_receipt():
            return None  # Amazon SES telling that a message was delivered, or a read receipt
        fields = self._status_fields()
        if fields:
            return self._from_status_fields(fields)
        if not self._sent_by_mail_system():
            return None
        return self._from_plain_text()

    def _is_read_receipt(self) -> bool:
        """RFC 8098 (``report-type=disposition-notification``): its ``Final-Recipient`` read the
        mail.  A Sieve ``reject`` (RFC 5429) is sent the same way with ``automatic-action;
        deleted``: that one bounced."""
        report_type = str(self.message.get_param("report-type", "", header="content-type")).lower()
        notes = [_status_text(p) for p in self.parts if p.get_content_type() in _DISPOSITION_TYPES]
        if report_type != "disposition-notification" and not notes:
            return False
        return not _SIEVE_REJECT_RE.search("\n".join(notes) or _raw_body(self.data))

    # --- complaints -------------------------------------------------------------------------

    def _feedback_fields(self) -> dict[str, list[str]] | None:
        """The fields of a feedback report (lower-case names), or None if this is not one."""
        message = self.message
        report_type = str(message.get_param("report-type", "", header="content-type")).lower()
        reports = [
            _status_text(p) for p in self.parts if p.get_content_type() == "message/feedback-report"
        ]
        if report_type == "feedback-report" or reports:
            return _fields(reports or [_raw_body(self.data)])  # a report the parser did not split
        head = self.body[:20_000]
        if _SES_COMPLAINT_RE.search(head):
            addresses = _SES_RECIPIENTS_RE.search(head)
            message_id = _SES_MESSAGE_ID_RE.search(head)
            feedback = _SES_FEEDBACK_RE.search(head)
            return {
                "feedback-type": [feedback.group(1) if feedback else "other"],
                "original-rcpt-to": _SES_ADDRESS_RE.findall(addresses.group(1))
                if addresses
                else [],
                "x-original-message-id": [message_id.group(1) or message_id.group(2)]
                if message_id
                else [],
                "user-agent": ["Amazon SES"],
            }
        for part in self.parts:
            inner = part.get_payload() if part.get_content_type() == "message/rfc822" else None
            if isinstance(inner, list) and inner and isinstance(inner[0], email.message.Message):
                # Microsoft's JMRP (Outlook.com, Hotmail)
                recipient = inner[0].get("x-hmxmroriginalrecipient")
                if recipient:
                    return {
                        "feedback-type": ["abuse"],
                        "original-rcpt-to": [header_text(recipient)],
                    }
        if clean_text(header_text(message.get("x-apple-unsubscribe", ""))).lower() == "true":
            sender = parse_address_header([header_text(message.get("from", ""))])
            return {"feedback-type": ["opt-out"], "removal-recipient": [a for _, a in sender[:1]]}
        return None

    def _complaint(self, fields: dict[str, list[str]]) -> Complaint | None:
        kind = (fields.get("feedback-type") or ["other"])[0].lower()
        feedback_type = _FEEDBACK_TYPES.get(kind, "other" if kind not in _NOT_COMPLAINTS else None)
        if feedback_type is None:
            return None  # an authentication failure report, a "not spam" report, a virus report
        recipients = [
            address
            for name in ("original-rcpt-to", "removal-recipient")
            for value in fields.get(name, [])
            if (address := normalize_address(_typed_value(value).strip("<> ")))
        ]
        original_id, original_to, original_from = self._original()
        referenced = next(
            (m for v in fields.get("x-original-message-id", []) if (m := extract_message_id(v))),
            None,
        )
        own = {a for _, a in parse_address_header([header_text(self.message.get("to", ""))])}
        sender = parse_address_header([header_text(self.message.get("from", ""))])
        reporter = (
            fields.get("user-agent") or [sender[0][1].rpartition("@")[2] if sender else ""]
        )[0]
        return Complaint(
            original_message_id=original_id or referenced,
            recipients=tuple(a for a in dict.fromkeys(recipients) if a not in own)[:MAX_RECIPIENTS],
            feedback_type=feedback_type,
            reporter=clean_text(reporter)[:200],
            original_to=tuple(dict.fromkeys(original_to))[:MAX_RECIPIENTS],
            original_from=original_from,
        )

    # --- delivery status fields ------------------------------------------------------------

    def _status_fields(self) -> list[dict[str, str]]:
        """Per-recipient blocks of DSN fields, in order (per-message fields folded into the
        first)."""
        texts: list[str] = []
        for part in self.parts:
            if part.get_content_type() in _STATUS_TYPES:
                texts.append(_status_text(part))
        if not texts and (
            "final-recipient" in self.body.lower() or "original-recipient" in self.body.lower()
        ):
            texts.append(self.body)
        blocks: list[dict[str, str]] = []
        current: dict[str, str] = {}
        for text in texts:
            unfolded = _FOLDING_RE.sub(" ", text[:MAX_NOTICE_CHARS])
            for match in _DSN_FIELD_RE.finditer(unfolded):
                name, value = match.group(1).lower(), clean_text(match.group(2))
                if (name in current and name != "x-original-message-id") or (
                    name in {"final-recipient", "original-recipient"}
                    and "final-recipient" in current
                    and name == "final-recipient"
                ):
                    blocks.append(current)
                    current = {}
                current.setdefault(name, value)
                if len(blocks) >= MAX_RECIPIENTS:
                    break
        if current:
            blocks.append(current)
        return [
            b
            for b in blocks
            if b.get("action")
            or b.get("status")
            or b.get("final-recipient")
            or b.get("original-recipient")
        ]

    def _from_status_fields(self, blocks: list[dict[str, str]]) -> Bounce | None:
        actions = [_typed_value(b.get("action", "")).lower() for b in blocks]
        chosen = [
            b
            for b, a in zip(blocks, actions, strict=True)
            if a not in _DELIVERED and not _typed_value(b.get("status", "")).startswith("2")
        ]
        if not chosen:
            return None  # a delivery confirmation
        first = chosen[0]
        status = _status_of(_typed_value(first.get("status", "")))
        diagnostic = _typed_value(first.get("diagnostic-code", "")) or _diagnostic(self.notice)
        if not status or status.endswith(".0.0"):
            status = _status_of(diagnostic) or _status_of(self.notice) or status
        action = _typed_value(first.get("action", "")).lower()
        if action not in {"failed", "delayed"}:
            action = (
                "delayed" if status.startswith("4") or _DELAY_RE.search(self.notice) else "failed"
            )
        if not status:
            status = "4.0.0" if action == "delayed" else "5.0.0"
        recipients: list[str] = []
        for block in chosen:
            for name in ("final-recipient", "original-recipient"):
                address = normalize_address(_typed_value(block.get(name, "")).strip("<>"))
                if address:
                    recipients.append(address)
        recipients += self._header_recipients()
        recipients += self._recipient_lines()
        referenced = next(
            (
                extract_message_id(b["x-original-message-id"])
                for b in blocks
                if b.get("x-original-message-id")
            ),
            None,
        )
        return self._build(status, action, diagnostic, recipients, referenced)

    # --- plain text -------------------------------------------------------------------------

    def _sent_by_mail_system(self) -> bool:
        """A person's mail titled "Undeliverable parcel" that quotes an address must stay a person's
        mail."""
        message = self.message
        if message.get("x-failed-recipients"):
            return True
        subject = decode_words(header_text(message.get("subject", "")))
        if _AUTO_REPLY_SUBJECT_RE.search(subject) and not BOUNCE_SUBJECT_RE.search(subject):
            return False
        if _is_auto_reply(message):
            return False
        if _null_sender(message) or _from_system(message):
            return True
        auto = clean_text(header_text(message.get("auto-submitted", ""))).lower()
        returns_original = any(p.get_content_type() in _ORIGINAL_TYPES for p in self.parts)
        return bool(
            BOUNCE_SUBJECT_RE.search(subject) and ((auto and auto != "no") or returns_original)
        )

    def _from_plain_text(self) -> Bounce | None:
        notice = self.notice
        diagnostic = _diagnostic(notice)
        status = _status_of(diagnostic) or _status_of(notice)
        if not status:
            code = _SMTP_CODE_RE.search(diagnostic) or _SMTP_CODE_RE.search(notice)
            if code:
                status = f"{code.group(1)[0]}.0.0"
        if not status:
            # no code: a notice that says it keeps trying is soft, any other has given up
            status = (
                "4.0.0"
                if _DELAY_RE.search(notice) and not _PERMANENT_RE.search(notice)
                else "5.0.0"
            )
        action = "delayed" if status.startswith("4") else "failed"
        recipients = self._header_recipients() + self._recipient_lines()
        bounce = self._build(status, action, diagnostic, recipients, None)
        if not bounce.recipients and bounce.original_message_id is None and not bounce.original_to:
            return None  # nothing to attribute: an auto-reply or a notice of another kind
        return bounce

    # --- shared -----------------------------------------------------------------------------

    def _header_recipients(self) -> list[str]:
        found: list[str] = []
        for value in self.message.get_all("x-failed-recipients") or []:
            found += [a for _, a in parse_address_header([header_text(value)])]
        return found

    def _recipient_lines(self) -> list[str]:
        """Addresses in the notice's own text (not the original), in order: the MTA's recipient
        lines."""
        found: list[str] = []
        for match in _ADDRESS_RE.finditer(self.notice):
            address = normalize_address(match.group(0).rstrip(".-"))
            if address and not is_system_sender(address):
                found.append(address)
            if len(found) >= MAX_RECIPIENTS:
                break
        return found

    def _original(self) -> tuple[str | None, list[str], str | None]:
        """The returned original's Message-ID, To + Cc and sender, from its part or the quoted
        text."""
        for part in self.parts:
            content_type = part.get_content_type()
            headers: email.message.Message | None = None
            if content_type in {"message/rfc822", "message/global"}:
                payload = part.get_payload()
                if (
                    isinstance(payload, list)
                    and payload
                    and isinstance(payload[0], email.message.Message)
                ):
                    headers = payload[0]
            elif content_type in _ORIGINAL_TYPES:
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    headers = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
                        payload[: 256 * 1024], headersonly=True
                    )
            if headers is None:
                continue
            summary = parse_headers(
                "".join(
                    f"{key}: {header_text(value)}\r\n"
                    for key, value in headers.raw_items()
                    if key.lower() in {"message-id", "to", "cc", "from"}
                ).encode("utf-8", "replace")
            )
            if summary.message_id or summary.to:
                return summary.message_id, [*summary.to, *summary.cc], summary.from_address
        quoted = self.quoted or self.body
        message_id = next(
            (
                found
                for line in _MSGID_LINE_RE.finditer(quoted)
                if (found := extract_message_id(line.group(1)))
            ),
            None,
        )
        to: list[str] = []
        sender: str | None = None
        for line in _HEADER_LINE_RE.finditer(quoted if self.quoted else ""):
            addresses = [a for _, a in parse_address_header([line.group(2)])]
            if line.group(1).lower() == "from":
                sender = sender or (addresses[0] if addresses else None)
            else:
                to += addresses
        return message_id, to, sender

    def _build(
        self,
        status: str,
        action: str,
        diagnostic: str,
        recipients: Iterable[str],
        referenced: str | None,
    ) -> Bounce:
        original_id, original_to, original_from = self._original()
        original_id = (
            original_id
            or referenced
            or extract_message_id(header_text(self.message.get("in-reply-to", "")))
        )  # Gmail and Office 365 point at the original
        own = {a for _, a in parse_address_header([header_text(self.message.get("to", ""))])}
        unique = [a for a in dict.fromkeys(recipients) if a not in own and a != original_from]
        severity: Severity = "soft" if status.startswith("4") or action == "delayed" else "hard"
        return Bounce(
            original_message_id=original_id,
            recipients=tuple(unique[:MAX_RECIPIENTS]),
            status=status,
            action=action,
            severity=severity,
            reason=_reason(f"{status} {diagnostic} {self.notice[:5000]}"),
            diagnostic=diagnostic[:MAX_DIAGNOSTIC_CHARS],
            original_to=tuple(dict.fromkeys(original_to)),
            original_from=original_from,
        )


_FOLDING_RE = re.compile(r"\r?\n[ \t]+")
_DELIVERED = {"delivered", "relayed", "expanded", "deliverable"}
_SES_DELIVERY_RE = re.compile(r'"(?:notificationType|eventType)"\s{0,3}:\s{0,3}"Delivery"')
_SES_COMPLAINT_RE = re.compile(r'"(?:notificationType|eventType)"\s{0,3}:\s{0,3}"Complaint"')
_SES_RECIPIENTS_RE = re.compile(r'"complainedRecipients"\s{0,3}:\s{0,3}\[([^\]]{0,20000})\]')
_SES_ADDRESS_RE = re.compile(r'"emailAddress"\s{0,3}:\s{0,3}"([^"\s]{1,320})"')
_SES_FEEDBACK_RE = re.compile(r'"complaintFeedbackType"\s{0,3}:\s{0,3}"([a-z-]{1,40})"')
# the original's header, or commonHeaders' messageId when it is one (<...>)
_SES_MESSAGE_ID_RE = re.compile(
    r'"name"\s{0,3}:\s{0,3}"Message-ID"\s{0,3},\s{0,3}"value"\s{0,3}:\s{0,3}"([^"]{1,998})"|'
    r'"messageId"\s{0,3}:\s{0,3}"(<[^"<>]{1,996}>)"',
    re.IGNORECASE,
)
_FEEDBACK_FIELD_RE = re.compile(
    r"^(feedback-type|user-agent|original-rcpt-to|removal-recipient)[ \t]{0,4}:[ \t]*(.{0,1000})$",
    re.IGNORECASE | re.MULTILINE,
)
_FEEDBACK_TYPES: dict[str, FeedbackType] = {
    "abuse": "abuse",
    "fraud": "fraud",
    "opt-out": "opt-out",
    "opt-out-list": "opt-out",
}
_NOT_COMPLAINTS = {"auth-failure", "not-spam", "virus", "dmarc"}
_DISPOSITION_TYPES = {"message/disposition-notification", "message/global-disposition-notification"}
_SIEVE_REJECT_RE = re.compile(
    r"^disposition:[ \t]*automatic-action/[^;\n]{0,80};[ \t]*deleted", re.I | re.M
)
_STATUS_TYPES = {"message/delivery-status", "message/global-delivery-status"}
_ORIGINAL_TYPES = {
    "text/rfc822-headers",
    "text/rfc822-header",
    "message/rfc822-headers",
    "text/global-headers",
}


def _leaf_parts(message: email.message.Message) -> list[email.message.Message]:
    """Every part, ``message/*`` parts kept whole (not descended into); at most MAX_PARTS, MAX_DEPTH
    deep."""
    started = time.thread_time()
    found: list[email.message.Message] = []
    stack: list[tuple[email.message.Message, int]] = [(message, 0)]
    while stack and len(found) < MAX_PARTS and time.thread_time() - started < MAX_SECONDS:
        part, depth = stack.pop()
        found.append(part)
        if (
            part.is_multipart()
            and not part.get_content_type().startswith("message/")
            and depth < MAX_DEPTH
        ):
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(
                    (p, depth + 1)
                    for p in reversed(payload)
                    if isinstance(p, email.message.Message)
                )
    return found


def _status_text(part: email.message.Message) -> str:
    """The text of a message/delivery-status part (compat32 parses each block as a Message)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return "\n\n".join(
            "\n".join(f"{k}: {header_text(v)}" for k, v in p.raw_items())
            for p in payload[: MAX_RECIPIENTS + 1]
            if isinstance(p, email.message.Message)
        )
    data = part.get_payload(decode=True)
    return data[:MAX_NOTICE_CHARS].decode("utf-8", "replace") if isinstance(data, bytes) else ""


def _fields(texts: list[str]) -> dict[str, list[str]]:
    """A feedback report's fields, each name with every value it has (``Original-Rcpt-To``
    repeats)."""
    found: dict[str, list[str]] = {}
    for text in texts:
        for match in _FEEDBACK_FIELD_RE.finditer(_FOLDING_RE.sub(" ", text[:MAX_NOTICE_CHARS])):
            values = found.setdefault(match.group(1).lower(), [])
            if len(values) < MAX_RECIPIENTS:
                values.append(clean_text(match.group(2)))
    return found


def _typed_value(value: str) -> str:
    """``rfc822; user@example.com`` → ``user@example.com``; ``smtp; 550 ...`` → ``550 ...``."""
    _, sep, rest = value.partition(";")
    return clean_text(rest if sep else value)


def _status_of(text: str) -> str:
    match = _STATUS_RE.search(text)
    return match.group(1) if match else ""


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
            text = payload[: MAX_NOTICE_CHARS * 4].decode(
                part.get_content_charset() or "utf-8", "replace"
            )
        except LookupError:
            text = payload[: MAX_NOTICE_CHARS * 4].decode("utf-8", "replace")
        texts.append(html_to_text(text) if content_type == "text/html" else text)
        if sum(len(t) for t in texts) > MAX_NOTICE_CHARS:
            break
    return "\n".join(texts).replace("\r\n", "\n")[:MAX_NOTICE_CHARS]


def _raw_body(data: bytes) -> str:
    match = re.search(rb"\r?\n\r?\n", data)
    body = data[match.end() :] if match else b""
    return body[:MAX_NOTICE_CHARS].decode("utf-8", "replace").replace("\r\n", "\n")


_DIAGNOSTIC_RES = (
    re.compile(r"remote server returned '([^'\n]{1,1000})'", re.I),  # Office 365
    re.compile(r"remote host said:[ \t]*(.{1,1000})", re.I),  # qmail
    re.compile(r"said:[ \t]*(.{1,1000})", re.I),  # Postfix
    re.compile(r"^[ \t]*((?:5[0-5]\d|4[0-5]\d)[ :-].{1,1000})$", re.MULTILINE),  # Exim, Yahoo
    re.compile(
        r"(?<![\d.])((?:5[0-5]\d|4[0-5]\d)[ -][245]\.\d{1,3}\.\d{1,3}.{0,1000})", re.MULTILINE
    ),
    # Gmail
    re.compile(r"the response (?:from the remote server )?was:\s{0,10}(\S.{0,1000})", re.I),
)


def _diagnostic(text: str) -> str:
    for pattern in _DIAGNOSTIC_RES:
        match = pattern.search(text)
        if match:
            return clean_text(match.group(1))
    return ""


def _reason(text: str) -> Reason:
    for reason, pattern in _REASONS:
        if pattern.search(text):
            return reason
    return "other"


def _null_sender(message: email.message.Message) -> bool:
    return any(
        not clean_text(header_text(v)).strip("<> ") for v in message.get_all("return-path") or []
    )


def _from_system(message: email.message.Message) -> bool:
    """From a mail system: a system address, or ``MAILER-DAEMON <>`` whose address is empty."""
    raw = header_text(message.get("from", ""))
    senders = parse_address_header([raw])
    if senders:
        return is_system_sender(senders[0][1])
    return (
        bool(re.search(r"mailer[-_ ]?daemon|postmaster|mail delivery", raw, re.IGNORECASE))
        or "<>" in raw
    )


def _is_auto_reply(message: email.message.Message) -> bool:
    """RFC 3834 and the common vendor headers of vacation replies."""
    auto = clean_text(header_text(message.get("auto-submitted", ""))).lower()
    if auto.startswith("auto-replied") and not _from_system(message) and not _null_sender(message):
        return True
    return (
        any(message.get(h) for h in ("x-autoreply", "x-autorespond", "x-vacation"))
        or clean_text(header_text(message.get("precedence", ""))).lower() == "auto_reply"
    )
