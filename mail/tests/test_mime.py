"""Hostile and ordinary messages through parse_headers / parse_message (R23, R27): never raise."""

from __future__ import annotations

import email.parser
import email.policy
import random
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from leadline_mail import mime
from leadline_mail.mime import MAX_PARTS, SUMMARY_FIELDS, header_items, parse_headers, parse_message


def test_headers_of_an_ordinary_message() -> None:
    summary = parse_headers(
        b"From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <Juergen@Example.COM>\r\n"
        b'To: "Doe, Jane" <jane@lead-company.com>, bob@b\xc3\xbccher.de,\r\n  Group: x@example.org, y@example.org;\r\n'
        b"Cc: undisclosed-recipients:;\r\nBcc: hidden@example.net\r\n"
        b"Subject: =?UTF-8?B?w4Rwcm9wb3M=?= of the deal\r\n"
        b"Date: Mon, 23 Nov 2026 10:00:00 +0100\r\nMessage-ID: <abc@example.com>\r\n"
        b"In-Reply-To: <parent@example.com> (comment)\r\n\r\n"
    )
    assert summary.from_address == "juergen@example.com"
    assert summary.from_name == "Jürgen Müller"
    assert summary.to == [
        "jane@lead-company.com",
        "bob@xn--bcher-kva.de",
        "x@example.org",
        "y@example.org",
    ]
    assert summary.cc == [] and summary.bcc == ["hidden@example.net"]
    assert summary.subject == "Äpropos of the deal"
    assert summary.date == datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    assert summary.date.utcoffset() == timedelta(hours=1)
    assert (
        summary.message_id == "<abc@example.com>" and summary.in_reply_to == "<parent@example.com>"
    )
    assert not summary.is_bounce_candidate


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # CVE-2023-27043 shapes: the lenient parser would pick the wrong or a forged address
        (b'To: "alice@example.org" <bob@example.com>', ["bob@example.com"]),
        (b"To: alice@example.org)<bob@example.com>", ["bob@example.com"]),
        (b"To: alice@example.org@evil.example", []),
        (b'To: "a\\"b,c@evil.example" <d@example.com>', ["d@example.com"]),
        # an encoded word must not produce an address or a line break
        (b"To: =?UTF-8?Q?mallory=40evil.example?= <ok@example.com>", ["ok@example.com"]),
        (b"To: =?UTF-8?B?PGV2aWxAZXZpbC5leGFtcGxlPg==?=", []),
        (b"To: (comment, with <x@evil.example>) real@example.com", ["real@example.com"]),
        (b"To: not an address, @nolocal.example, local@, <>", []),
    ],
)
def test_address_headers_are_not_parsed_leniently(header: bytes, expected: list[str]) -> None:
    assert parse_headers(header + b"\r\n\r\n").to == expected


def test_encoded_newline_in_subject_and_name_is_flattened() -> None:
    summary = parse_headers(
        b"From: =?UTF-8?Q?Eve=0D=0ABcc:_victim@example.com?= <eve@example.com>\r\n"
        b"Subject: =?UTF-8?Q?hello=0ABcc:_x@example.com=00?=\r\n\r\n"
    )
    assert (
        "\n" not in summary.subject
        and "\r" not in summary.subject
        and "\x00" not in summary.subject
    )
    assert "\n" not in summary.from_name
    assert summary.bcc == []


def test_garbage_headers_never_raise() -> None:
    for junk in (
        b"",
        b"\x00" * 100,
        b"\xff\xfe" * 5000,
        b"From: <<<<<>>>>\r\nDate: not a date\r\n",
        b"Subject: =?x-unknown?Q?abc?= =?UTF-8?B?!!!?=\r\n",
        b"To: " + b"(" * 100_000 + b"\r\n",
        b"To: " + b"a@b.example, " * 20_000 + b"\r\n",
    ):
        summary = parse_headers(junk)
        assert summary.date is None or isinstance(summary.date, datetime)


def test_multipart_message_text_html_and_attachments() -> None:
    raw = (
        b"From: lead@example.com\r\nTo: me@example.org\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        b'--outer\r\nContent-Type: multipart/alternative; boundary="inner"\r\n\r\n'
        b"--inner\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Gr=FC=DFe,  see   the file\r\n"
        b"--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b'<p onclick="x()">Gr\xc3\xbc\xc3\x9fe<script>alert(1)</script><a href="javascript:evil()">x</a></p>\r\n'
        b"--inner--\r\n"
        b"--outer\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; "
        b"filename*=UTF-8''Angebot%20%C3%BC.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"JVBERi0xLjQK\r\n"
        b'--outer\r\nContent-Type: image/png; name="../../etc/passwd"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        b"iVBORw0KGgo=\r\n--outer--\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.text == "Grüße,  see   the file"
    assert parsed.snippet == "Grüße, see the file"
    assert parsed.html is not None and "script" not in parsed.html and "onclick" not in parsed.html
    assert "javascript" not in parsed.html and "Grüße" in parsed.html
    assert [(a.filename, a.content_type, a.size) for a in parsed.attachments] == [
        ("Angebot ü.pdf", "application/pdf", 9),
        ("etc_passwd", "image/png", 8),
    ]
    assert parsed.defects == [] and parsed.size == len(raw)


def test_html_only_message_gets_text_from_html() -> None:
    parsed = parse_message(
        b"Content-Type: text/html\r\n\r\n<html><head><style>p{}</style></head>"
        b"<body><p>Hello&nbsp;<b>world</b></p><script>x</script></body></html>"
    )
    assert parsed.text == "Hello\xa0world" or parsed.text == "Hello world"
    assert parsed.defects == []


def _multipart(boundary: str, parts: list[bytes]) -> bytes:
    out = f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode()
    for part in parts:
        out += f"--{boundary}\r\n".encode() + part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_bad_boundaries_return_with_defects() -> None:
    missing = b'Subject: x\r\nContent-Type: multipart/mixed; boundary="nope"\r\n\r\nbody without the boundary\r\n'
    parsed = parse_message(missing)
    assert "StartBoundaryNotFoundDefect" in parsed.defects
    assert parsed.text == "body without the boundary"
    unclosed = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n'
    parsed = parse_message(unclosed)
    assert parsed.text == "hi" and parsed.defects


def test_deep_nesting_is_capped() -> None:
    depth = 5000
    raw = b"".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
        for i in range(depth)
    )
    raw += b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    started = time.monotonic()
    parsed = parse_message(b"Subject: deep\r\n" + raw)
    assert time.monotonic() - started < 5
    assert parsed.summary.subject == "deep"
    assert any("multipart" in d or "nested" in d for d in parsed.defects)


def test_huge_part_count_is_capped() -> None:
    parts = [b"Content-Type: text/plain\r\n\r\npart %d" % i for i in range(20_000)]
    started = time.monotonic()
    parsed = parse_message(b"Subject: many\r\n" + _multipart("p", parts))
    assert time.monotonic() - started < 10
    assert parsed.defects
    assert "part 0" in parsed.text
    assert len(parsed.text.splitlines()) <= MAX_PARTS


def test_broken_encodings_and_nuls() -> None:
    raw = (
        b"Subject: =?utf-8?B?broken base64?=\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n"
        b"--z\r\nContent-Type: text/plain; charset=no-such-charset\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"!!!not base64!!!\r\n"
        b"--z\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"=ZZ bad qp and a NUL\x00 byte and \xff\xfe invalid utf-8\r\n"
        b"--z\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nQUJD=\r\n"
        b"--z--\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.defects
    assert "\x00" not in parsed.text and "invalid utf-8" in parsed.text
    assert any("NUL" in d for d in parsed.defects)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00" * 1000,
        b"no headers at all, just text",
        b'Content-Type: text/plain; charset="\r\n\r\nx',
        b"Content-Type: message/rfc822\r\n\r\n" * 200,
        b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n--\r\n",
        b"Content-Type: multipart/report; boundary=a\r\n\r\n--a\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"garbage\x00\r\n--a--",
        bytes(range(256)) * 400,
    ],
)
def test_malformed_inputs_never_raise(raw: bytes) -> None:
    parsed = parse_message(raw)
    assert parsed.size == len(raw)
    assert isinstance(parsed.text, str)


def test_date_without_zone_is_utc() -> None:
    summary = parse_headers(b"Date: Mon, 23 Nov 2026 10:00:00\r\n\r\n")
    assert summary.date == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert parse_headers(b"Date: Mon, 23 Nov 2026 10:00:00 -0500\r\n\r\n").date == datetime(
        2026, 11, 23, 10, 0, tzinfo=timezone(timedelta(hours=-5))
    )


def test_huge_header_block_is_cut_and_the_body_kept() -> None:
    raw = (
        b"Subject: huge\r\n"
        + b"X-Junk: 1\r\n" * 300_000
        + b"To: "
        + b"a@example.com, " * 100_000
        + b"\r\n\r\nbody"
    )
    # CPU time, as the parse cap counts it: a loaded machine stretches the wall clock, not the work (0.8 s here;
    # read whole, the block takes 2 s and the body is lost)
    started = time.process_time()
    parsed = parse_message(raw)
    assert time.process_time() - started < 2
    assert parsed.summary.subject == "huge" and parsed.text == "body"
    assert any("header block" in d for d in parsed.defects)


CORPORA = Path(__file__).parent / "corpora"
ATOMS = [
    *(
        b"From: ",
        b"From ",
        b"To: ",
        b"Cc:",
        b"Subject: ",
        b":x",
        b"X y: z",
        b"Message-ID: ",
        b";",
        b",",
        b'"q"',
    ),
    *(
        b" ",
        b"\t",
        b"\r\n",
        b"\n",
        b"\r",
        b"\x00",
        b"\x0b",
        b"\x0c",
        b"\x1c",
        b"\x85",
        b"\xc3\xa9",
        b"\xff",
    ),
    *(
        b"a@b.example",
        b"<m@x>",
        b"Lead <l@c.example>",
        b"=?utf-8?q?x?=",
        b"Content-Type: multipart/report",
    ),
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000",
]


def test_header_items_are_the_stdlib_parsers_raw_items() -> None:
    """The header scan's own reader gives what ``BytesParser(compat32, headersonly)`` does, on every message
    of the corpora and on random junk of header-ish pieces (folding, bare CR, a Unix From, no colon)."""
    rng = random.Random(20)
    blocks = [path.read_bytes() for path in sorted(CORPORA.rglob("*")) if path.is_file()]
    blocks += [b"".join(rng.choice(ATOMS) for _ in range(rng.randint(0, 40))) for _ in range(5000)]
    for block in blocks:
        parsed = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
            block, headersonly=True
        )
        assert header_items(block) == list(parsed.raw_items()), block[:200]


def test_the_summary_fields_alone_summarise_a_header_as_the_whole_block() -> None:
    """The header scan fetches only SUMMARY_FIELDS (IMAP HEADER.FIELDS): what parse_headers makes of them is
    what it makes of the whole header block, on every message of the corpora."""
    wanted = {name.lower() for name in SUMMARY_FIELDS}
    for path in sorted(CORPORA.rglob("*")):
        if not path.is_file():
            continue
        block = path.read_bytes()
        fields = b"".join(
            f"{name}: {value}\r\n".encode("ascii", "surrogateescape")
            for name, value in header_items(block)
            if name.lower() in wanted
        )
        assert parse_headers(fields + b"\r\n") == parse_headers(block), path.name


def test_the_date_fast_path_reads_dates_as_email_utils_does() -> None:
    """The Date of nearly every message is read without email.utils; for every form it takes it gives what
    email.utils gives (instant and zone), and what it does not take goes to email.utils."""
    rng = random.Random(20)
    days = ["Mon, ", "Sun, ", "Xyz, ", "", "Mon,", "Mon "]
    months = ["Jan", "nov", "DEC", "Foo", "June"]
    zones = [
        "+0000",
        "-0000",
        "+0100",
        "-0530",
        "+1400",
        "+2359",
        "+2400",
        "-9999",
        "+0199",
        "GMT",
        "EST",
    ]
    tails = ["", " (CET)", " (UTC) x", "(CET)", " extra"]
    samples = [
        f"{rng.choice(days)}{rng.choice(['1', '09', '29', '31', '32', '0'])} {rng.choice(months)} "
        f"{rng.choice(['2026', '1999', '0099', '26', '10000'])} {rng.choice(['10', '23', '24', '7'])}:"
        f"{rng.choice(['00', '59', '60'])}:{rng.choice(['00', '59', '60', '61'])} {rng.choice(zones)}{rng.choice(tails)}"
        for _ in range(5000)
    ]
    taken = 0
    for text in [*samples, "Mon, 23 Nov 2026 10:00:00 +0100", "Feb 30 2026 10:00:00 +0000"]:
        ours, theirs = mime._date(text), mime._date_of_email_utils(text)
        assert ours == theirs, text
        assert (ours.utcoffset() if ours else None) == (theirs.utcoffset() if theirs else None), (
            text
        )
        taken += mime._DATE_RE.fullmatch(text) is not None
    assert taken > 100, "the samples exercise the fast path"
