"""Building MIME (no servers): the kept header classes and parsed headers change nothing in the output."""

from __future__ import annotations

import email
import email.generator
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage

import pytest

from leadline_kit.errors import Unprocessable
from leadline_send.messages import composition
from leadline_send.messages.composition import (
    WIRE,
    AttachmentFile,
    Draft,
    Recipient,
    Sender,
    _check_reparse,
    build_message,
    serialise,
)

WHEN = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _build(sender: Sender, to: str, name: str, subject: str, message_id: str) -> bytes:
    draft = Draft(
        category="personal", to=(Recipient(to, name),), subject=subject, text="Grüße\n.\nline"
    )
    return build_message(draft, sender, message_id=message_id, date=WHEN, unsubscribe_link=None).raw


def test_the_same_message_builds_to_the_same_bytes_and_reads_back() -> None:
    sender = Sender("zoe@company.example.com", "Zoë Ünal")
    first = _build(
        sender, "lead@example.org", "Jürgen Groß", "Angebot für Sie — 10 %", "<a@x.example>"
    )
    again = _build(
        sender, "lead@example.org", "Jürgen Groß", "Angebot für Sie — 10 %", "<a@x.example>"
    )
    assert first == again
    parsed = email.message_from_bytes(first, policy=policy.default)
    assert str(parsed["Subject"]) == "Angebot für Sie — 10 %"
    assert parsed["From"].addresses[0].display_name == "Zoë Ünal"
    assert parsed["To"].addresses[0].display_name == "Jürgen Groß"
    assert first.isascii() and b"\r\n" in first and b"\n" not in first.replace(b"\r\n", b"")


def test_a_repeated_header_text_is_not_confused_across_senders() -> None:
    one = _build(
        Sender("a@company.example.com", "A"), "lead@example.org", "", "Hi", "<1@x.example>"
    )
    two = _build(
        Sender("b@company.example.com", "B"), "lead@example.org", "", "Hi", "<2@x.example>"
    )
    assert email.message_from_bytes(one, policy=policy.default)["From"].addresses[0].username == "a"
    assert email.message_from_bytes(two, policy=policy.default)["From"].addresses[0].username == "b"


def test_headers_that_read_back_differently_are_refused() -> None:
    raw = _build(Sender("a@company.example.com"), "lead@example.org", "", "Hi", "<3@x.example>")
    intended = [
        ("From", "a@company.example.com"),
        ("To", "lead@example.org"),
        ("Subject", "Hello"),
        ("Date", "Mon, 23 Nov 2026 12:00:00 +0000"),
        ("Message-ID", "<3@x.example>"),
    ]
    with pytest.raises(Unprocessable) as refused:
        _check_reparse(raw, intended)
    assert refused.value.slug == "header-mismatch"
    _check_reparse(
        raw, [(n, "Hi" if n == "Subject" else v) for n, v in intended]
    )  # the true headers pass


@pytest.mark.parametrize(
    "text",
    [
        "one line",
        "a\nb\r\nc\rd\n",
        "a\n\rb\r\r\nc\n\n\r",
        "\n.\n..x\n.\r\n",
        "Grüße\n" * 40 + "no end",
        "x" * 1200 + "\n" + "y" * 90,
        "",
    ],
)
def test_the_serialiser_writes_what_the_standard_generator_writes(text: str) -> None:
    msg = EmailMessage(policy=policy.default)
    msg["From"] = Address("Zoë Ünal", "zoe", "company.example.com")
    msg["Subject"] = "Angebot für Sie — " + "lang " * 30
    msg.set_content(text)
    msg.add_alternative(f"<p>{text}</p>", subtype="html")
    msg.add_attachment(
        b"\x00\x01binary\r\n" * 100,
        maintype="application",
        subtype="octet-stream",
        filename="prices.bin",
    )
    assert serialise(msg) == msg.as_bytes(policy=WIRE)


def test_the_serialiser_ends_lines_as_the_standard_generator_with_any_line_ends_in_a_payload() -> (
    None
):
    msg = EmailMessage(policy=policy.default)
    msg["Subject"] = "raw payload"
    msg.set_payload("a\rb\r\nc\n\rd\r\r\ne\n\n")  # as stored, not normalised by set_content
    assert (
        serialise(msg)
        == msg.as_bytes(policy=WIRE)
        == b"Subject: raw payload\r\n\r\na\r\nb\r\nc\r\n\r\nd\r\n\r\ne\r\n\r\n"
    )


def test_a_built_message_is_what_the_standard_generator_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    draft = Draft(
        category="personal",
        to=(Recipient("lead@example.org", "Jürgen Groß"),),
        subject="Hi",
        text="line\r\n.\nlast",
        html="<p>line</p>",
        attachments=(AttachmentFile("a.txt", "text/plain", b"attached\n"),),
    )

    def build() -> bytes:
        return build_message(
            draft,
            Sender("a@company.example.com", "A"),
            message_id="<4@x.example>",
            date=WHEN,
            unsubscribe_link=None,
        ).raw

    monkeypatch.setattr(
        email.generator.Generator, "_make_boundary", classmethod(lambda cls, text=None: "=b=")
    )
    ours = build()
    monkeypatch.setattr(composition, "serialise", lambda msg: msg.as_bytes(policy=WIRE))
    assert ours == build()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("To", "lead@example.org"),
        ("To", "Jürgen Groß <lead@example.org>"),
        ("From", '"Doe, John" <j@example.org>'),
        ("To", ", ".join(f"lead{n}@example.org" for n in range(8))),
        ("Subject", "Smart Mail 12"),
        ("Subject", "Angebot für Sie"),
        ("Subject", "=?utf-8?q?looks_encoded?="),
        ("Subject", "x" * 73),
        ("Subject", "x" * 74),
        ("Subject", "word " * 40),
        ("Message-ID", "<0123abcd@leadline.localhost>"),
        ("Content-Type", 'text/plain; charset="utf-8"'),
        ("Date", "Mon, 23 Nov 2026 12:00:00 +0000"),
        # plain values, made without a parse, and their near misses, parsed
        ("To", "Jane Doe <jane.doe@x.example.com>"),
        ("Cc", "a@x.org, Jane Doe <b@y.org>"),
        ("To", "O'Brien <o@x.org>"),
        ("To", "Jane  Doe <a@b.org>"),
        ("To", "a..b@x.org"),
        ("To", "=?utf-8?q?Zo=C3=AB?= <z@x.org>"),
        ("To", "Jane Doe <a@b.org>, " + "x" * 60 + "@long.example"),
        ("Reply-To", "Jane <j@x.org>"),
        ("Message-ID", "<a.b+c@x-y.example>"),
        ("Message-ID", "<a@[127.0.0.1]>"),
    ],
)
def test_a_kept_header_goes_out_as_the_standard_folder_writes_it(name: str, value: str) -> None:
    ours, standard = composition._HEADERS(name, value), HeaderRegistry()(name, value)
    assert ours.fold(policy=WIRE) == standard.fold(policy=WIRE)
    assert str(ours) == str(standard)
