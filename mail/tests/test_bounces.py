"""Bounce recognition (R17) on sample notifications from the common mail servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from leadline_mail.bounces import Bounce, parse_bounce
from leadline_mail.mime import parse_headers

SAMPLES = Path(__file__).parent / "fixtures" / "bounces"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@pytest.mark.parametrize(
    ("name", "message_id", "recipient", "status", "diagnostic_part"),
    [
        (
            "postfix_dsn.eml",
            "<0a1b2c3d4e5f@leadline.example.org>",
            "jane.doe@lead-company.com",
            "5.1.1",
            "User unknown in virtual mailbox table",
        ),
        (
            "gmail.eml",
            "<gmail-original-42@mail.gmail.com>",
            "nobody@lead-company.com",
            "5.1.1",
            "does not exist",
        ),
        (
            "office365.eml",
            "<o365-orig-7@leadline.example.org>",
            "bob@fabrikam.com",
            "5.1.10",
            "RecipientNotFound",
        ),
        (
            "exim.eml",
            "<exim-orig-99@leadline.example.org>",
            "carol@lead-company.com",
            "5.7.1",
            "Mailbox unavailable",
        ),
        (
            "qmail.eml",
            "<qmail-orig-5@leadline.example.org>",
            "dave@lead-company.com",
            "5.0.0",
            "No such user here",
        ),
        (
            "yahoo.eml",
            "<yahoo-orig-3@leadline.example.org>",
            "henry@lead-company.com",
            "5.0.0",
            "554: delivery error: dd This user doesn't have a yahoo.com account",
        ),
    ],
)
def test_bounce_formats(
    name: str, message_id: str, recipient: str, status: str, diagnostic_part: str
) -> None:
    raw = sample(name)
    assert parse_headers(raw).is_bounce_candidate
    bounce = parse_bounce(raw)
    assert bounce is not None
    assert bounce.original_message_id == message_id
    assert bounce.recipient == recipient
    assert bounce.status == status
    assert bounce.action == "failed"
    assert diagnostic_part in bounce.diagnostic


def test_bounce_with_lf_line_endings() -> None:
    bounce = parse_bounce((SAMPLES / "exim.eml").read_bytes().replace(b"\r\n", b"\n"))
    assert bounce is not None and bounce.recipient == "carol@lead-company.com"


def test_plain_postfix_notice_without_report() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.org (Mail Delivery System)\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nTo: sales@example.org\r\n\r\n"
        b"This is the mail system at host mx.example.org.\r\n\r\n"
        b"<grace@lead-company.com>: host mx.lead-company.com[203.0.113.7] said: 554 5.7.1\r\n"
        b"    Relay access denied (in reply to RCPT TO command)\r\n\r\n"
        b"--- Original message headers follow ---\r\n\r\nMessage-ID: <pf-plain@leadline.example.org>\r\n"
    )
    assert parse_bounce(raw) == Bounce(
        original_message_id="<pf-plain@leadline.example.org>",
        recipients=("grace@lead-company.com",),
        status="5.7.1",
        action="failed",
        severity="hard",
        reason="policy",
        diagnostic="554 5.7.1",
    )


def test_original_message_id_from_the_report_when_nothing_is_attached() -> None:
    raw = sample("gmail.eml")
    without_original = raw[: raw.rindex(b"--000000000000aaa0000\r\nContent-Type: message/rfc822")]
    without_original += b"--000000000000aaa0000--\r\n"
    bounce = parse_bounce(without_original)
    assert bounce is not None and bounce.original_message_id == "<gmail-original-42@mail.gmail.com>"
    no_reference = without_original.replace(b"X-Original-Message-ID", b"X-Other")
    bounce = parse_bounce(no_reference)
    assert (
        bounce is not None and bounce.original_message_id == "<gmail-original-42@mail.gmail.com>"
    )  # In-Reply-To


def test_out_of_office_is_not_a_bounce() -> None:
    assert parse_bounce(sample("out_of_office.eml")) is None


def test_a_delayed_notice_is_a_soft_bounce() -> None:
    bounce = parse_bounce(sample("delayed.eml"))
    assert bounce is not None
    assert (bounce.severity, bounce.action, bounce.status) == ("soft", "delayed", "4.4.1")
    assert bounce.recipient == "erin@lead-company.com" and bounce.reason == "expired"


def test_the_lead_is_chosen_never_the_mailbox_nor_the_sender() -> None:
    raw = (
        b"From: MAILER-DAEMON <>\r\nTo: sales@example.org\r\nSubject: failure notice\r\n\r\n"
        b"Mail from sales@example.org to list@lists.example.net and ann@lead-company.com failed:\r\n"
        b"550 5.1.1 mailbox unavailable\r\n\r\n--- Below this line is a copy of the message.\r\n\r\n"
        b"From: Sales <sales@example.org>\r\nTo: ann@lead-company.com\r\nMessage-ID: <m1@example.org>\r\n\r\nhi\r\n"
    )
    bounce = parse_bounce(raw)
    assert bounce is not None and bounce.severity == "hard"
    leads = {"ann@lead-company.com", "sales@example.org"}
    assert (
        bounce.lead_recipient(leads.__contains__, own_addresses=["sales@example.org"])
        == "ann@lead-company.com"
    )
    assert (
        bounce.lead_recipient(
            {"sales@example.org"}.__contains__, own_addresses=["sales@example.org"]
        )
        is None
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"From: MAILER-DAEMON <>\r\nSubject: Mail delivery failed\r\n\r\n"
        b"There was an error delivering your mail to <ann@lead-company.com>.\r\n550 5.1.1 no such user\r\n",
        b"From: postmaster@[192.0.2.1]\r\nSubject: Re: your offer\r\n\r\n"
        b"<ann@lead-company.com>: 550 5.1.1 no such user\r\n",
        b"From: Mail Delivery System <Mail.Delivery.System@mx.example.net>\r\nSubject: Re: your offer\r\n\r\n"
        b"Delivery to the following recipients failed permanently:\r\n   * ann@lead-company.com\r\n",
    ],
)
def test_plain_notices_from_mail_systems_are_believed(raw: bytes) -> None:
    assert parse_headers(raw).is_bounce_candidate
    bounce = parse_bounce(raw)
    assert (
        bounce is not None
        and bounce.recipient == "ann@lead-company.com"
        and bounce.severity == "hard"
    )


def test_an_unsplit_report_is_read_from_the_raw_body() -> None:
    raw = (
        b"From: postmaster@example.net\r\nSubject: Delivery Status Notification\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="wrong"\r\n\r\n'
        b"--right\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n"
        b"Final-Recipient: rfc822; ann@lead-company.com\r\nAction: delayed\r\nStatus: 4.2.2\r\n--right--\r\n"
    )
    bounce = parse_bounce(raw)
    assert bounce is not None and bounce.recipient == "ann@lead-company.com"
    assert (bounce.severity, bounce.reason) == ("soft", "mailbox_full")


def test_delivery_confirmations_and_complaints_are_not_bounces() -> None:
    delivered = (
        b"From: MAILER-DAEMON@example.net\r\nSubject: Successful Mail Delivery Report\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        b"Final-Recipient: rfc822; ann@lead-company.com\r\nAction: delivered\r\nStatus: 2.0.0\r\n--b--\r\n"
    )
    complaint = (
        b"From: abuse@example.net\r\nSubject: complaint\r\n"
        b"Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n--b--\r\n"
    )
    assert parse_bounce(delivered) is None and parse_bounce(complaint) is None


def test_a_read_receipt_is_not_a_bounce() -> None:
    """RFC 8098: a disposition notification carries a Final-Recipient too; that recipient read the mail."""
    receipt = (
        b"From: Ann <ann@lead-company.com>\r\nTo: sales@example.org\r\nSubject: Read: Offer\r\n"
        b"Content-Type: multipart/report; report-type=disposition-notification; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nYour message was displayed.\r\n"
        b"--b\r\nContent-Type: message/disposition-notification\r\n\r\nReporting-UA: mx; Thunderbird\r\n"
        b"Final-Recipient: rfc822; ann@lead-company.com\r\nOriginal-Message-ID: <smart-1@example.org>\r\n"
        b"Disposition: manual-action/MDN-sent-manually; displayed\r\n--b--\r\n"
    )
    assert parse_bounce(receipt) is None
    assert parse_bounce(receipt.replace(b"; report-type=disposition-notification", b"")) is None
    rejected = receipt.replace(
        b"manual-action/MDN-sent-manually; displayed",
        b"automatic-action/MDN-sent-automatically; deleted",
    )
    assert parse_bounce(rejected) is not None, "a Sieve reject (RFC 5429) is a bounce"


def test_a_persons_mail_about_undeliverable_things_is_not_a_bounce() -> None:
    raw = (
        b"From: Jane <jane@lead-company.com>\r\nTo: sales@example.org\r\n"
        b"Subject: Re: Undeliverable parcel, could not be delivered to bob@lead-company.com\r\n\r\n"
        b"Hi, the parcel could not be delivered to bob@lead-company.com. 550 reasons.\r\n\r\n"
        b"-----Original Message-----\r\nMessage-ID: <quoted@example.org>\r\n"
    )
    assert parse_headers(raw).is_bounce_candidate  # worth a look...
    assert parse_bounce(raw) is None  # ...but a person wrote it


def test_ordinary_and_garbage_input_is_not_a_bounce() -> None:
    assert parse_bounce(b"From: a@example.com\r\nSubject: hi\r\n\r\nhello\r\n") is None
    for junk in (
        b"",
        b"\x00\xff" * 1000,
        b"Content-Type: multipart/report; boundary=x\r\n\r\n--x\r\n" * 3000,
    ):
        assert parse_bounce(junk) is None


@pytest.mark.parametrize(
    "body",
    [
        b"wasn't delivered to " + b"a@" * 50_000,
        b"a" * 200_000,
        b"\n" * 200_000 + b"x",
        b"following address(es) failed:\n" + b" " * 100_000,
        b"the response was:" + b"\n" * 100_000,
        b"<" + b"a" * 200_000,
        b"delivery has failed to these recipients or groups:\n" + b"<" * 100_000,
    ],
)
def test_crafted_notices_parse_in_bounded_time(body: bytes) -> None:
    """Anyone can send mail "From: MAILER-DAEMON": the text patterns must not backtrack badly."""
    import time

    raw = b"From: MAILER-DAEMON@evil.example\r\nSubject: Undelivered Mail\r\n\r\n" + body
    started = time.monotonic()
    parse_bounce(raw)
    assert time.monotonic() - started < 2


def _report(status_part: bytes) -> bytes:
    return (
        b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\n" + status_part + b"\r\n--b--\r\n"
    )


@pytest.mark.parametrize(
    "raw",
    [
        _report(
            b"Final-Recipient: rfc822; ann@lead-company.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            b"Diagnostic-Code: smtp; " + b"x" * 10_000_000 + b"\r\n"
        ),
        _report(
            b"".join(
                b"Final-Recipient: rfc822; r%d@lead-company.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
                % n
                for n in range(10_000)
            )
        ),
        b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\n"
        + b"Content-Type: message/rfc822\r\n\r\nFrom: a@example.net\r\n" * 100
        + b"\r\nFinal-Recipient: x\r\n",
    ],
    ids=["10 MB status part", "10,000 recipients", "100 nested messages"],
)
def test_hostile_notices_are_bounded(raw: bytes, caplog: pytest.LogCaptureFixture) -> None:
    import time

    started = time.monotonic()
    bounce = parse_bounce(raw)
    assert time.monotonic() - started < 3
    assert bounce is None or len(bounce.recipients) <= 50
    assert any("read in part" in r.getMessage() for r in caplog.records), (
        "a cut notice is logged (R27)"
    )
