"""Bounce recognition scored on public notices our code was not written against (R17).

``corpora/manifest.json`` (made by ``corpora/build_manifest.py``) lists each notice with its authors'
expectation: sisimai's set-of-emails (status, reason and class per file from sisimai's own tests),
flufl.bounce's samples (addresses and temporary/permanent from its tests), CPython's email test mail
(ordinary mail).  Each bounce is rewritten to answer one Smart Mail: the returned original's Message-ID
becomes the Smart Mail's, the expected recipient becomes the lead's address.  A notice then scores when
it passes the header pre-filter, is recognised, and ends on the lead: its recipient is the lead, or it
names no recipient at all but carries the Smart Mail's Message-ID (the send service knows that message's
recipient).  The recipient figure counts the notices whose expectation names a recipient.

Complaints (sisimai's ``feedback`` notices) are scored apart: one scores when the pre-filter fetches it and
it is read as a complaint of the feedback type sisimai expects; the ``auth-failure`` reports among them must
be read as neither a complaint nor a bounce.  No bounce or look-alike may be read as a complaint.

A fifth of the notices is held out (``held_out``): the fixes were made without reading them, and their
figures are reported apart.  ``uv run python mail/tests/test_bounce_corpus.py`` prints the figures and the
misses of the rest.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leadline_mail.bounces import Bounce, Complaint, parse_notice
from leadline_mail.mime import parse_headers

CORPORA = Path(__file__).parent / "corpora"
LEAD = "lead.recipient@customer.example"
SMART_MAIL_ID = "<smart-mail-0001@leadline.test>"
BAR_RECIPIENT = 0.95
BAR_CLASS = 0.95
BAR_LOOKALIKES = 0.02
BAR_COMPLAINTS = 0.95
COMPLAINT_TYPES = {
    "abuse",
    "fraud",
    "opt-out",
    "other",
}  # the rest (auth-failure, ...) are not complaints

_MESSAGE_ID_RE = re.compile(
    rb"^[ \t>]*message-id:[ \t]*(<[^<>\s]{1,900}>)", re.IGNORECASE | re.MULTILINE
)


def manifest() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((CORPORA / "manifest.json").read_text())
    return entries


def rewritten(entry: dict[str, Any]) -> bytes:
    """The notice answering our Smart Mail."""
    raw: bytes = (CORPORA / entry["file"]).read_bytes()
    ids = [m.group(1) for m in _MESSAGE_ID_RE.finditer(raw)]
    if len(ids) > 1:  # the first is the notice's own; a later one is the returned original's
        original = next((i for i in ids[1:] if i != ids[0]), None)
        if original is not None:
            raw = raw.replace(original, SMART_MAIL_ID.encode())
    if entry["recipient"]:
        raw = re.sub(
            re.escape(str(entry["recipient"])).encode(), LEAD.encode(), raw, flags=re.IGNORECASE
        )
    return raw


@dataclass
class Outcome:
    fetched: bool
    recognised: bool
    on_lead: bool
    severity: str | None
    complaint: Complaint | None = None
    neither: bool = False  # read as neither a bounce nor a complaint


def outcome(raw: bytes) -> Outcome:
    """What the sync makes of a notice in the INBOX of the mailbox that sent the Smart Mail."""
    summary = parse_headers(raw)
    bounce = parse_notice(raw)
    if not isinstance(bounce, Bounce):
        complaint = bounce if isinstance(bounce, Complaint) else None
        return Outcome(summary.is_bounce_candidate, False, False, None, complaint, bounce is None)
    lead = bounce.lead_recipient(lambda address: address == LEAD, own_addresses=summary.to)
    on_lead = lead == LEAD or (
        not bounce.recipients and bounce.original_message_id == SMART_MAIL_ID
    )
    return Outcome(
        summary.is_bounce_candidate, True, summary.is_bounce_candidate and on_lead, bounce.severity
    )


@dataclass
class Score:
    recipients: int = 0
    recipients_right: int = 0
    classes: int = 0
    classes_right: int = 0
    lookalikes: int = 0
    lookalikes_taken: int = 0
    complaints: int = 0
    complaints_right: int = 0
    others: int = 0
    others_taken_for_complaints: int = 0

    def figures(self) -> tuple[float, float, float]:
        return (
            self.recipients_right / max(self.recipients, 1),
            self.classes_right / max(self.classes, 1),
            self.lookalikes_taken / max(self.lookalikes, 1),
        )

    def line(self, label: str) -> str:
        recipient, klass, lookalike = self.figures()
        return (
            f"{label}: right lead {recipient:.1%} ({self.recipients_right}/{self.recipients}), "
            f"hard/soft {klass:.1%} ({self.classes_right}/{self.classes}), look-alikes taken "
            f"{lookalike:.1%} ({self.lookalikes_taken}/{self.lookalikes}); complaints read right "
            f"{self.complaints_right / max(self.complaints, 1):.1%} ({self.complaints_right}/{self.complaints}), "
            f"others taken for complaints {self.others_taken_for_complaints}/{self.others}"
        )


def read_as_expected(entry: dict[str, Any], found: Outcome) -> bool:
    """A complaint fetched and read with its expected feedback type; another feedback report ignored."""
    if entry["feedback_type"] not in COMPLAINT_TYPES:
        return found.neither
    return (
        found.fetched
        and found.complaint is not None
        and found.complaint.feedback_type == entry["feedback_type"]
    )


def score(held_out: bool, misses: list[str] | None = None) -> Score:
    result = Score()
    for entry in manifest():
        if entry["held_out"] != held_out or entry["kind"] == "unscored":
            continue
        found = outcome(
            (CORPORA / entry["file"]).read_bytes()
            if entry["kind"] != "bounce"
            else rewritten(entry)
        )
        if entry["kind"] == "complaint":
            result.complaints += 1
            right = read_as_expected(entry, found)
            result.complaints_right += right
            if not right and misses is not None:
                misses.append(
                    f"{entry['file']}: complaint ({entry['feedback_type']}) not read as expected"
                )
        else:
            result.others += 1
            taken = found.complaint is not None
            result.others_taken_for_complaints += taken
            if taken and misses is not None:
                misses.append(f"{entry['file']}: {entry['kind']} read as a complaint")
        if entry["kind"] in {"lookalike", "complaint"}:
            result.lookalikes += 1
            taken = found.fetched and found.recognised
            result.lookalikes_taken += taken
            if taken and misses is not None:
                misses.append(f"{entry['file']}: look-alike taken for a bounce")
            continue
        if entry["recipient"]:
            result.recipients += 1
            result.recipients_right += found.on_lead
            if not found.on_lead and misses is not None:
                misses.append(
                    f"{entry['file']}: fetched={found.fetched} recognised={found.recognised} "
                    f"not on the lead ({entry['reason']})"
                )
        if entry["class"]:
            result.classes += 1
            right = found.recognised and found.severity == entry["class"]
            result.classes_right += right
            if not right and misses is not None:
                misses.append(
                    f"{entry['file']}: class {found.severity} expected {entry['class']} "
                    f"({entry['status']} {entry['reason']})"
                )
    return result


def test_corpus_is_large_enough() -> None:
    bounces = [e for e in manifest() if e["kind"] == "bounce"]
    assert len(bounces) >= 500
    assert sum(1 for e in manifest() if e["kind"] in {"lookalike", "complaint"}) >= 50


def test_the_corpus_meets_the_bar() -> None:
    """The acceptance bar on every notice; the held-out fifth is printed apart, to be read on its own."""
    scored, held = score(held_out=False), score(held_out=True)
    print(scored.line("scored"))
    print(held.line("held out"))
    total = Score(*(a + b for a, b in zip(vars(scored).values(), vars(held).values(), strict=True)))
    recipient, klass, lookalike = total.figures()
    assert recipient >= BAR_RECIPIENT and klass >= BAR_CLASS and lookalike <= BAR_LOOKALIKES, (
        total.line("all")
    )
    assert total.complaints_right >= BAR_COMPLAINTS * total.complaints, total.line("all")
    assert total.others_taken_for_complaints == 0, total.line("all")


if __name__ == "__main__":
    misses: list[str] = []
    print(score(held_out=False, misses=misses).line("scored"))
    print(score(held_out=True).line("held out"))
    print(
        Score(
            *(
                a + b
                for a, b in zip(
                    vars(score(False)).values(), vars(score(True)).values(), strict=True
                )
            )
        ).line("all")
    )
    if "-v" in sys.argv:
        print("\n".join(misses))
