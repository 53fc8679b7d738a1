"""kit.rpc on a real NATS server: a typed answer, and every way of not getting one as ``Unanswered``."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from nats.aio.msg import Msg
from pydantic import BaseModel

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


async def test_a_responder_refuses_what_it_cannot_read_and_fails_as_told(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    subject = f"kittest.rpc.{uuid.uuid4().hex}"
    asked: list[MailboxSlotRequest] = []

    async def answer(request: MailboxSlotRequest) -> tuple[BaseModel, str]:
        asked.append(request)
        if request.company_id == request.mailbox_id:
            raise rpc.Unreadable("the company is not a mailbox")
        if len(asked) > 2:
            raise RuntimeError("the database is away")
        return MailboxSlotReply(status="granted", position=len(asked)), "granted"

    def refusal(why: str) -> BaseModel:
        return MailboxSlotReply(status="invalid", detail=why)

    silent = rpc.Responder(subject, MailboxSlotRequest, answer, refusal)
    tasks = []
    try:
        subscription = await rpc.subscribe(nc, silent, "kittest")
        tasks.append(asyncio.create_task(rpc.respond(subscription, silent, concurrency=4)))
        ask = MailboxSlotRequest(company_id=uuid.uuid4(), mailbox_id=uuid.uuid4())
        assert (await rpc.ask(nc, subject, ask, MailboxSlotReply, timeout=5)).position == 1
        same = uuid.uuid4()
        odd = await rpc.ask(
            nc, subject, MailboxSlotRequest(company_id=same, mailbox_id=same), MailboxSlotReply, 5
        )
        assert (odd.status, odd.detail) == (
            "invalid",
            "invalid request: the company is not a mailbox",
        )
        unreadable = MailboxSlotReply.model_validate_json(
            (await nc.request(subject, b'{"company_id": 1}', 5)).data
        )
        assert unreadable.status == "invalid" and unreadable.detail.startswith(
            "invalid request: company_id"
        )
        with pytest.raises(rpc.Unanswered) as failed:
            await rpc.ask(nc, subject, ask, MailboxSlotReply, timeout=0.5)
        assert (
            failed.value.reason is rpc.Unheard.TIMEOUT
        )  # a failure is not answered: the asker asks again

        stopped = tasks.pop()
        stopped.cancel()
        await asyncio.gather(stopped, return_exceptions=True)  # unsubscribed on the way out
        refusing = rpc.Responder(subject, MailboxSlotRequest, answer, refusal, rpc.OnFailure.REFUSE)
        subscription = await rpc.subscribe(nc, refusing, "kittest")
        tasks.append(asyncio.create_task(rpc.respond(subscription, refusing)))
        told = await rpc.ask(nc, subject, ask, MailboxSlotReply, timeout=5)
        assert (told.status, told.detail) == (
            "invalid",
            "the service failed to answer; retry later",
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await nc.close()
