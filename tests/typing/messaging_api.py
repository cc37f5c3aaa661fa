"""Type-level checks of the messaging API (run by mypy --strict, never executed)."""

from __future__ import annotations

import sqlite3

from typing_extensions import assert_type

from resilience_kit.messaging import (
    DeadLetter,
    DeadLetterFilter,
    DeadLetterQueue,
    Event,
    Inbox,
    MemorySagaJournal,
    Outbox,
    OutboxRelay,
    RelayReport,
    ReplayReport,
    ResilientConsumer,
    Saga,
    SagaResult,
    SagaStatus,
    SagaStep,
    idempotent,
    saga_plan,
)
from resilience_kit.stores.memory import MemoryStore
from resilience_kit.stores.sqlite import SQLiteStore
from resilience_kit.transports import MemoryBus

store = SQLiteStore("app.db")
outbox = Outbox(store.outbox, topic="orgs")
connection: sqlite3.Connection = store.connect()
event = Event(type="org.created", key="org:1", payload={})
assert_type(outbox.add(connection, event), None)

bus = MemoryBus()
relay = OutboxRelay(store.outbox, bus)
queue = DeadLetterQueue(store.dead_letters)
memory = MemoryStore()
inbox = Inbox(memory.inbox, consumer="billing")


async def use_the_facades() -> None:
    assert_type(await relay.drain(), RelayReport)
    assert_type(await queue.list(topic="orgs"), list[DeadLetter])
    assert_type(await queue.replay(DeadLetterFilter(), outbox), ReplayReport)
    assert_type(await inbox.record(event), bool)


async def handle(received: Event) -> None:
    return None


consumer = ResilientConsumer(
    bus.subscribe("orgs", group="billing"), handle, name="billing", dead_letters=memory.dead_letters
)


@idempotent(memory.idempotency, key="order_id")
async def charge(order_id: str, cents: int) -> int:
    return cents


async def use_charge() -> None:
    assert_type(await charge("o-1", 1200), int)
    assert_type(await charge(order_id="o-2", cents=5), int)  # names kept (ParamSpec)


# -- Saga --------------------------------------------------------------------------------


async def reserve(order: dict[str, int]) -> None:
    return None


checkout: Saga[dict[str, int]] = Saga(
    "checkout", [SagaStep("reserve", reserve)], journal=MemorySagaJournal()
)


async def use_the_saga() -> None:
    result = await checkout.run({"id": 1}, run_id="1")
    assert_type(result, SagaResult)
    assert_type(result.status, SagaStatus)
    assert_type(result.compensated, tuple[str, ...])
    assert_type(saga_plan(["a"], []), tuple[str, str] | SagaResult)
