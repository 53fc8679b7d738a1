"""NATS request/reply between services: a typed request, a typed reply, one error for no answer.

Asking: ``ask(nc, subject, request, Reply, timeout)`` sends the pydantic ``request`` and returns the
answer parsed as ``Reply``.  Every way of not getting a usable answer raises :class:`Unanswered`,
whose ``reason`` says which: nobody subscribed (``no_responders``), nobody answered in time
(``timeout``), or the answer does not parse as ``Reply`` (``malformed``, e.g. a peer of another
version).  A caller handles one exception, and a bad reply never escapes from inside a worker.

Answering: a :class:`Responder` names the subject, the request type, the answer and the refusal (the
reply type with ``detail`` saying why).  ``await subscribe(nc, responder, queue)`` joins the
service's queue group, flushed so that requests reach it from then on (before the service says it is
ready); ``respond(subscription, responder, concurrency)`` then answers until cancelled, at most
``concurrency`` requests at a time, and unsubscribes on the way out.  A request that does not parse,
or that the answer raises :class:`Unreadable` for, gets the refusal; an unexpected failure is logged
and, by the responder's ``on_failure``, either answered with the refusal (the asker need not wait
for its timeout) or left unanswered (the asker times out and asks again: never an answer we did not
read, such as "not found" for a database failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ValidationError

log = logging.getLogger("leadline.rpc")

Reply = TypeVar("Reply", bound=BaseModel)
Request = TypeVar("Request", bound=BaseModel)

ANSWERS = Counter(
    "leadline_rpc_answers_total", "Request/reply answers given", ["subject", "outcome"]
)
ANSWER_SECONDS = Histogram(
    "leadline_rpc_answer_seconds",
    "Time to answer a request",
    ["subject"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


class Unheard(StrEnum):
    """Why a request got no usable answer."""

    NO_RESPONDERS = "no_responders"
    TIMEOUT = "timeout"
    MALFORMED = "malformed"


class Unanswered(Exception):
    """A request to another service got no usable answer (see ``reason``)."""

    def __init__(self, subject: str, reason: Unheard) -> None:
        super().__init__(f"{subject}: {reason}")
        self.subject = subject
        self.reason = reason


async def ask(
    nc: Client, subject: str, request: BaseModel, reply: type[Reply], timeout: float
) -> Reply:
    try:
        message = await nc.request(subject, request.model_dump_json().encode(), timeout=timeout)
    except NoRespondersError as exc:
        raise Unanswered(subject, Unheard.NO_RESPONDERS) from exc
    except (NatsTimeoutError, TimeoutError) as exc:
        raise Unanswered(subject, Unheard.TIMEOUT) from exc
    try:
        return reply.model_validate_json(message.data)
    except ValidationError as exc:
        raise Unanswered(subject, Unheard.MALFORMED) from exc


class Unreadable(Exception):
    """The request cannot be answered as asked; the message is the refusal's ``detail``."""


class OnFailure(StrEnum):
    """What a responder does when its answer fails unexpectedly."""

    REFUSE = "refuse"  # answer with the refusal: the asker learns at once
    SILENCE = "silence"  # no answer: the asker times out and asks again


@dataclass(frozen=True)
class Responder(Generic[Request]):
    """How one subject is answered: ``answer`` gives the reply, or the reply and an outcome label
    for the metrics (``answered`` otherwise)."""

    subject: str
    request: type[Request]
    answer: Callable[[Request], Awaitable[BaseModel | tuple[BaseModel, str]]]
    refusal: Callable[[str], BaseModel]
    on_failure: OnFailure = OnFailure.SILENCE


def why_invalid(exc: ValidationError) -> str:
    return "invalid request: " + "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
        for e in exc.errors(include_input=False)[:5]
    )


async def subscribe(nc: Client, responder: Responder[Any], queue: str) -> Subscription:
    subscription = await nc.subscribe(responder.subject, queue=queue)
    await nc.flush()
    return subscription


async def _answer(responder: Responder[Any], data: bytes) -> tuple[BaseModel | None, str]:
    try:
        answered = await responder.answer(responder.request.model_validate_json(data))
        return answered if isinstance(answered, tuple) else (answered, "answered")
    except ValidationError as exc:
        return responder.refusal(why_invalid(exc)), "invalid"
    except Unreadable as exc:
        return responder.refusal(f"invalid request: {exc}"), "invalid"
    except Exception:
        log.exception("answering %s failed", responder.subject)
        if responder.on_failure is OnFailure.REFUSE:
            return responder.refusal("the service failed to answer; retry later"), "error"
        return None, "error"


async def respond(
    subscription: Subscription, responder: Responder[Any], concurrency: int = 1
) -> None:
    """Answer the subscription's requests until cancelled, at most ``concurrency`` at a time."""
    slots = asyncio.Semaphore(concurrency)
    in_flight: set[asyncio.Task[None]] = set()

    async def answer_one(msg: Msg) -> None:
        started = time.perf_counter()
        try:
            reply, outcome = await _answer(responder, msg.data)
            if reply is not None and msg.reply:
                await msg.respond(reply.model_dump_json().encode())
            ANSWERS.labels(responder.subject, outcome).inc()
            ANSWER_SECONDS.labels(responder.subject).observe(time.perf_counter() - started)
        except Exception:
            log.exception("%s: could not send the reply", responder.subject)
        finally:
            slots.release()

    try:
        async for msg in subscription.messages:
            await slots.acquire()
            task = asyncio.create_task(answer_one(msg))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
    finally:
        await asyncio.gather(*in_flight, return_exceptions=True)
        with contextlib.suppress(Exception):  # the connection may already be closing
            await subscription.unsubscribe()
