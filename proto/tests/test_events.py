"""Event schemas: subjects, round trips, the published AsyncAPI document."""

from __future__ import annotations

import json
import re
import typing
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from leadline_proto.asyncapi import asyncapi_document, event_models
from leadline_proto.events import LeadCreatedV1, LeadPayload, parse_event, utcnow
from leadline_proto.subjects import STREAM_SUBJECTS

SUBJECT = re.compile(r"^leadline\.[a-z]+\.[a-z_]+\.v[0-9]+$")


@pytest.mark.parametrize("model", event_models(), ids=lambda m: m.__name__)
def test_every_event_has_a_subject_inside_the_stream(model: type) -> None:
    type_ = model.model_fields["type"].default  # type: ignore[attr-defined]
    version = model.model_fields["version"].default  # type: ignore[attr-defined]
    subject = f"leadline.{type_}.v{version}"
    assert SUBJECT.match(subject), subject
    assert any(subject.startswith(s[:-1]) for s in STREAM_SUBJECTS), (
        f"{subject} is outside the stream"
    )
    assert typing.get_args(model.model_fields["type"].annotation) == (type_,)  # type: ignore[attr-defined]


def test_round_trip_and_rejects_garbage() -> None:
    event = LeadCreatedV1(
        company_id=uuid.uuid4(),
        payload=LeadPayload(lead_id=uuid.uuid4(), addresses=["a@b.example"], created_at=utcnow()),
    )
    assert parse_event(event.model_dump_json()) == event
    assert event.subject == "leadline.lead.created.v1"
    with pytest.raises(ValidationError):
        parse_event(b'{"type": "lead.created", "version": 1}')
    with pytest.raises(ValidationError):
        parse_event(b'{"type": "no.such", "version": 1, "company_id": "x", "payload": {}}')
    with pytest.raises(ValidationError):
        parse_event(b"not json")


def test_committed_asyncapi_document_is_current() -> None:
    committed = json.loads((Path(__file__).parent.parent / "asyncapi.json").read_text())
    generated = json.loads(json.dumps(asyncapi_document(), default=str))
    assert committed == generated, "run `make asyncapi` and commit proto/asyncapi.json"
