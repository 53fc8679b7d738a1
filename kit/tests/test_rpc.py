"""kit.rpc on a real NATS server: a typed answer, and every way of not getting one as ``Unanswered``."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from nats.aio.msg import Msg

from leadline_kit import rpc
from leadline_proto.requests import MailboxSlotReply, MailboxSlotRequest


async def test_an_answer_is_typed_and_no_usable_answer_is_one_error(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    subject = f"kittest.rpc.{uuid.uuid4().hex}"
    ask = MailboxSlotRequest(company_id=uuid.uuid4(), mailbox_id=uuid.uuid4())
    try:
        with pytest.raises(rpc.Unanswered) as nobody:
            await rpc.ask(nc, subject, ask, MailboxSlotReply, timeout=2)
        assert nobody.value.reason is rpc.Unheard.NO_RESPONDERS

        answers = [b'{"status": "granted", "position": 3}', b"not json", b'{"status": 7}']

        async def answer(msg: Msg) -> None:
            if answers:
                await msg.respond(answers.pop(0))  # the last request is never answered

        await nc.subscribe(subject, cb=answer)
        reply = await rpc.ask(nc, subject, ask, MailboxSlotReply, timeout=2)
        assert (reply.status, reply.position) == ("granted", 3)
        for _ in range(2):
            with pytest.raises(rpc.Unanswered) as unreadable:
                await rpc.ask(nc, subject, ask, MailboxSlotReply, timeout=2)
            assert unreadable.value.reason is rpc.Unheard.MALFORMED
        started = asyncio.get_running_loop().time()
        with pytest.raises(rpc.Unanswered) as silent:
            await rpc.ask(nc, subject, ask, MailboxSlotReply, timeout=0.2)
        assert silent.value.reason is rpc.Unheard.TIMEOUT
        assert asyncio.get_running_loop().time() - started < 2
    finally:
        await nc.close()
