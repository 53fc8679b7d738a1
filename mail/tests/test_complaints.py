"""Complaints (feedback reports, RFC 5965) are read apart from bounces: who complained, about which message."""

from __future__ import annotations

import pytest

from leadline_mail.bounces import Bounce, Complaint, parse_bounce, parse_notice
from leadline_mail.mime import parse_headers

LEAD = "ann@lead-company.com"


def arf(feedback_type: bytes, rcpt_to: bytes = b"", original_to: bytes = LEAD.encode()) -> bytes:
    return (
        b"From: Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.yahoo.com>\r\n"
        b"To: sales@leadline.example.org\r\nSubject: FW: Our offer\r\n"
        b"Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n"
        b"--b\r\nContent-Type: message/feedback-report\r\n\r\n"
        b"Feedback-Type: "
        + feedback_type
        + b"\r\nUser-Agent: Yahoo!-Mail-Feedback/2.0\r\nVersion: 1\r\n"
        + rcpt_to
        + b"--b\r\nContent-Type: message/rfc822\r\n\r\n"
        b"From: Sales <sales@leadline.example.org>\r\nTo: " + original_to + b"\r\n"
        b"Message-ID: <smart-1@leadline.example.org>\r\nSubject: Our offer\r\n\r\nBuy now\r\n--b--\r\n"
    )


def test_an_arf_report_names_the_lead_and_the_message() -> None:
    raw = arf(b"abuse", b"Original-Rcpt-To: " + LEAD.encode() + b"\r\n", b"redacted@yahoo.com")
    complaint = parse_notice(raw)
    assert isinstance(complaint, Complaint) and parse_bounce(raw) is None
    assert parse_headers(raw).is_bounce_candidate
    assert (complaint.feedback_type, complaint.original_message_id) == (
        "abuse",
        "<smart-1@leadline.example.org>",
    )
    assert complaint.reporter == "Yahoo!-Mail-Feedback/2.0"
    is_lead = {LEAD}.__contains__
    assert complaint.lead_recipient(is_lead, own_addresses=["sales@leadline.example.org"]) == LEAD


def test_a_redacted_report_falls_back_to_the_original() -> None:
    complaint = parse_notice(arf(b"abuse"))
    assert isinstance(complaint, Complaint) and complaint.recipients == ()
    assert complaint.lead_recipient({LEAD}.__contains__, own_addresses=[]) == LEAD
    redacted = parse_notice(arf(b"abuse", original_to=b"redacted@yahoo.com"))
    assert (
        isinstance(redacted, Complaint)
        and redacted.lead_recipient({LEAD}.__contains__, own_addresses=[]) is None
    )
    assert (
        redacted.original_message_id == "<smart-1@leadline.example.org>"
    )  # the sender knows whom it went to


@pytest.mark.parametrize(
    ("given", "read"), [(b"fraud", "fraud"), (b"opt-out", "opt-out"), (b"x-new", "other")]
)
def test_feedback_types(given: bytes, read: str) -> None:
    complaint = parse_notice(arf(given))
    assert isinstance(complaint, Complaint) and complaint.feedback_type == read


@pytest.mark.parametrize("kind", [b"auth-failure", b"not-spam", b"virus"])
def test_other_feedback_reports_are_neither_complaints_nor_bounces(kind: bytes) -> None:
    assert parse_notice(arf(kind)) is None


def test_amazon_ses_and_microsoft_reports() -> None:
    ses = (
        b"From: AWS Notifications <no-reply@sns.amazonaws.com>\r\nSubject: AWS Notification Message\r\n\r\n"
        b'{"notificationType":"Complaint","complaint":{"complainedRecipients":[{"emailAddress":"'
        + LEAD.encode()
        + b'"}],"complaintFeedbackType":"abuse"},"mail":{"headers":[{"name":"Message-ID",'
        b'"value":"<smart-2@leadline.example.org>"}]}}\r\n'
    )
    jmrp = (
        b"From: staff@hotmail.com\r\nSubject: complaint about message from 192.0.2.1\r\n"
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n"
        b"X-HmXmrOriginalRecipient: " + LEAD.encode() + b"\r\nTo: " + LEAD.encode() + b"\r\n"
        b"Message-ID: <smart-3@leadline.example.org>\r\n\r\nhi\r\n--b--\r\n"
    )
    for raw, message_id in (
        (ses, "<smart-2@leadline.example.org>"),
        (jmrp, "<smart-3@leadline.example.org>"),
    ):
        complaint = parse_notice(raw)
        assert parse_headers(raw).is_bounce_candidate
        assert isinstance(complaint, Complaint) and complaint.recipients == (LEAD,)
        assert complaint.original_message_id == message_id


def test_a_bounce_is_still_a_bounce() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        b"Final-Recipient: rfc822; "
        + LEAD.encode()
        + b"\r\nAction: failed\r\nStatus: 5.1.1\r\n--b--\r\n"
    )
    assert isinstance(parse_notice(raw), Bounce)
