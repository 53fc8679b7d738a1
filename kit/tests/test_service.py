"""The service runtime's collector settings while it serves."""

from __future__ import annotations

import gc

from sqlalchemy import MetaData

from leadline_kit.outbox import outbox_table
from leadline_kit.service import GC_YOUNG_THRESHOLD, create_service_app
from leadline_kit.settings import KitSettings


class MadeAtStartup:
    """Its instances are tracked by the collector."""


async def test_startup_objects_are_frozen_while_serving_and_given_back_on_stop() -> None:
    before = gc.get_threshold()
    app = create_service_app(
        name="probe",
        settings=KitSettings(),
        schema="probe",
        outbox=outbox_table(MetaData(schema="probe")),
        routers=[],
        use_nats=False,
    )
    startup_object = MadeAtStartup()
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 0
        assert not any(o is startup_object for o in gc.get_objects())  # a full collection skips it
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
    assert any(o is startup_object for o in gc.get_objects())
