"""Generate the AsyncAPI 3 document for every event from the pydantic models."""

from __future__ import annotations

import json
import sys
import typing
from typing import Any

from leadline_proto.events import Event, EventBase
from leadline_proto.subjects import STREAM_NAME


def event_models() -> list[type[EventBase]]:
    union = typing.get_args(Event)[0]
    return list(typing.get_args(union))


def asyncapi_document() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for model in event_models():
        name = model.__name__
        type_ = model.model_fields["type"].default
        version = model.model_fields["version"].default
        subject = f"leadline.{type_}.v{version}"
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for def_name, def_schema in schema.pop("$defs", {}).items():
            schemas[def_name] = def_schema
        schemas[name] = schema
        messages[name] = {
            "name": name,
            "title": f"{type_} v{version}",
            "summary": (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else type_,
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "properties": {"Nats-Msg-Id": {"type": "string", "description": "equals event_id"}},
            },
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
        channels[name] = {
            "address": subject,
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        operations[f"receive{name}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{name}"},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Leadline events",
            "version": "1.0.0",
            "description": f"Every event is published to the JetStream stream {STREAM_NAME} "
            "through a transactional outbox, with Nats-Msg-Id set to the event id.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def main() -> None:
    json.dump(asyncapi_document(), sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
