"""Parser processes: they parse as inline parsing does, start when needed, and never outlive the service."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from email.message import EmailMessage
from pathlib import Path

from leadline_kit.infra import ChildProcess
from leadline_mail.mime import parse_message
from leadline_sync.sync.parse_worker import PREVIEW_HTML_CHARS, PREVIEW_TEXT_CHARS, parse_all
from leadline_sync.sync.parsing import INLINE_BELOW, MessageParser


def messages(count: int) -> list[bytes]:
    raws = []
    for i in range(count):
        message = EmailMessage()
        message["From"] = f"buyer{i}@customer.example"
        message["To"] = "me@acme.example"
        message["Subject"] = f"offer {i}"
        message["Message-ID"] = f"<offer-{i}@customer.example>"
        message.set_content(f"About the offer, part {i}.\n" * 20)
        message.add_attachment(
            b"%PDF-1.4 " * 50, maintype="application", subtype="pdf", filename=f"offer-{i}.pdf"
        )
        raws.append(message.as_bytes())
    return raws


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def written(pid: int) -> int:
    """Bytes a process wrote (a parser process writes only its answers)."""
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(io["wchar"])


async def test_workers_parse_as_inline_start_on_a_large_batch_and_replace_a_dead_one() -> None:
    raws = messages(3 * INLINE_BELOW)
    expected = [parse_message(raw) for raw in raws]
    parser = MessageParser(2)
    try:
        assert await parser.parse(raws[: INLINE_BELOW - 1]) == expected[: INLINE_BELOW - 1]
        assert parser.running == 0, "a small batch is parsed inline and starts nothing"
        assert await parser.parse(raws) == expected  # inline, while the workers start
        # two starts of Python (and their imports) can take more than 100 looks of 50 ms on a loaded machine
        deadline = asyncio.get_running_loop().time() + 60
        while parser.running < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert parser.running == 2
        assert await parser.parse(raws) == expected
        pids = [w.process.pid for w in parser._idle]
        os.kill(pids[0], signal.SIGKILL)
        await asyncio.sleep(0.2)
        assert await parser.parse(raws) == expected, "the dead worker's part is parsed inline"
        assert parser.running == 1
    finally:
        parser.close()


async def test_workers_start_when_a_large_batch_is_expected_and_parse_it() -> None:
    raws = messages(INLINE_BELOW)
    parser = MessageParser(1)
    try:
        parser.expect(INLINE_BELOW - 1)
        assert parser._starting is None and parser.running == 0, (
            "a batch parsed inline starts nothing"
        )
        parser.expect(INLINE_BELOW)  # while its bodies are read
        assert await parser.parse(raws) == parse_all(raws)
        [worker] = parser._idle
        assert written(worker.process.pid) > 0, (
            "the worker answered the batch: it was not parsed inline"
        )
    finally:
        parser.close()


SERVICE = """
import asyncio
from leadline_sync.sync.parsing import MessageParser

async def main():
    parser = MessageParser(1)
    raws = [b"From: a@b.example\\r\\nSubject: hello\\r\\n\\r\\nWords.\\r\\n"] * 40
    await parser.parse(raws)
    while not parser.running:
        await asyncio.sleep(0.05)
    await parser.parse(raws)
    print(parser._idle[0].process.pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def test_a_killed_service_leaves_no_parser_process() -> None:
    with ChildProcess(["-c", SERVICE], output=True) as service:
        worker = int(service.line())
        assert alive(worker)
    deadline = time.monotonic() + 10
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(worker), "the parser process outlived the killed service"


def test_of_a_body_only_the_preview_an_event_carries_is_kept() -> None:
    """What crosses a parser process's pipe and the outbox: the start of the text, and the HTML only when
    there is no text."""
    both = EmailMessage()
    both["From"], both["Subject"] = "buyer@customer.example", "long"
    both.set_content("word " * 3000)
    both.add_alternative("<p>" + "word " * 3000 + "</p>", subtype="html")
    html_only = EmailMessage()
    html_only["From"], html_only["Subject"] = "buyer@customer.example", "no text"
    html_only.set_content("<p>&nbsp;</p>" * 10_000, subtype="html")  # markup without a word of text
    [long, markup] = parse_all([both.as_bytes(), html_only.as_bytes()])
    assert (
        long.text == parse_message(both.as_bytes()).text[:PREVIEW_TEXT_CHARS] and long.html is None
    )
    whole = parse_message(html_only.as_bytes())
    assert (
        not whole.text.strip() and whole.html is not None and len(whole.html) > PREVIEW_HTML_CHARS
    )
    assert markup.html == whole.html[:PREVIEW_HTML_CHARS]
