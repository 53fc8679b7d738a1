"""NATS request/reply between services: a typed request, a typed reply, one error for no answer.

``ask(nc, subject, request, Reply, timeout)`` sends the pydantic ``request`` and returns the answer
parsed as ``Reply``.  Every way of not getting a usable answer raises :class:`Unanswered`, whose
``reason`` says which: nobody subscribed (``no_responders``), nobody answered in time (``timeout``),
or the answer does not parse as ``Reply`` (``malformed``, e.g. a peer of another version).  A caller
handles one exception, and a bad reply never escapes as a validation error from inside a worker.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import BaseModel, ValidationError

Reply = TypeVar("Reply", bound=BaseModel)


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


async def ask(nc: Client, subject: str, request: BaseModel, reply: type[Reply], timeout: float) -> Reply:
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
