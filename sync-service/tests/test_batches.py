"""A scan's batches and a parser process's requests are bounded in bytes, not only in messages."""

from __future__ import annotations

from leadline_mail.imap import FetchedHeader
from leadline_mail.mime import parse_headers
from leadline_sync.matching import CompanyDirectory
from leadline_sync.sync.engine import ScannedHeaders
from leadline_sync.sync.parsing import byte_runs


def scanned(sizes: dict[int, int], uids: list[int]) -> ScannedHeaders:
    summary = parse_headers(b"From: a@b.example\r\n\r\n")
    wanted = {uid: (FetchedHeader(uid, size, None, b""), summary) for uid, size in sizes.items()}
    return ScannedHeaders(uids, wanted, {}, {}, CompanyDirectory())


def test_a_batch_holds_at_most_its_count_and_its_bytes_of_bodies() -> None:
    uids = list(range(1, 21))
    # wanted: 2, 4, ..., 20 (10 of them); 8 is a large message
    sizes = {uid: 300_000 if uid == 8 else 100 for uid in uids if uid % 2 == 0}
    parts = scanned(sizes, uids).split(3, 250_000)
    assert [list(p.wanted) for p in parts] == [[2, 4, 6], [8], [10, 12, 14], [16, 18, 20]]
    assert [uid for p in parts for uid in p.uids] == uids, "every UID in one part, in order"
    assert all(
        sum(h.size for h, _ in p.wanted.values()) <= 250_000 or len(p.wanted) == 1 for p in parts
    )
    assert [list(p.wanted) for p in scanned({}, uids).split(3, 250_000)] == [[]], (
        "no lead mail: one part"
    )


def test_requests_to_a_parser_process_are_runs_of_at_most_the_limit() -> None:
    raws = [b"x" * n for n in (100, 200, 300, 1000, 50, 50)]
    assert byte_runs(raws, 400) == [raws[0:2], raws[2:3], raws[3:4], raws[4:6]]
    assert byte_runs(raws, 10_000) == [raws]
    assert byte_runs([], 400) == []
