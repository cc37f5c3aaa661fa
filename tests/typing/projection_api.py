"""Type checks of `Projection` and its stores: mypy runs this file; nothing here runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from typing_extensions import assert_type

from resilience_kit.messaging import Event, Projection, RebuildReport, ValidationReport
from resilience_kit.stores.memory import MemoryProjectionStore
from resilience_kit.stores.sqlite import SQLiteStore
from resilience_kit.typing import ProjectionStore


def keys(event: Event) -> list[str]:
    return [event.key]


def apply(event: Event, rows: Mapping[str, Any]) -> dict[str, Any]:
    return {event.key: rows.get(event.key, 0) + 1}


memory: ProjectionStore = MemoryProjectionStore()
sqlite: ProjectionStore = SQLiteStore("app.db").projections
projection = Projection("counts", store=memory, keys=keys, apply=apply, keep_log=True)
assert_type(projection.version, int | None)
assert_type(projection.log(), AsyncIterator[Event])


async def use() -> None:
    assert_type(await projection.handle(Event(type="a", key="k", payload={})), bool)
    assert_type(await projection.get("k"), Any)
    assert_type(await projection.validate(events=projection.log()), ValidationReport)
    assert_type(await projection.rebuild(projection.log()), RebuildReport)
