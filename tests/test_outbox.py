"""Outbox and Inbox facades: what they accept and refuse (nothing is written on a refusal)."""

from __future__ import annotations

import uuid

import anyio
import pytest

from resilience_kit import ConfigurationError
from resilience_kit.errors import EventTooLargeError
from resilience_kit.messaging import Event, Inbox, Outbox
from resilience_kit.stores.memory import MemoryStore

pytestmark = pytest.mark.anyio


def event(n: int = 0, **payload: object) -> Event:
    return Event(type="org.created", key="org:1", payload={"n": n, **payload})


async def test_an_oversized_event_is_refused_and_nothing_is_written() -> None:
    store = MemoryStore()
    outbox = Outbox(store.outbox, topic="t", max_bytes=200)
    with store.transaction() as transaction:
        outbox.add(transaction, event())
        with pytest.raises(EventTooLargeError):
            outbox.add_many(transaction, [event(1), event(2, blob="x" * 500)])
    assert (await store.outbox.status()).pending == 1  # the valid one only


async def test_topics_and_events_are_checked() -> None:
    store = MemoryStore()
    with pytest.raises(ConfigurationError, match="topic"):
        Outbox(store.outbox).add(None, event())  # no topic anywhere
    with pytest.raises(ConfigurationError, match="topic"):
        Outbox(store.outbox, topic="ok").add(None, event(), topic="bad\nname")
    with pytest.raises(ConfigurationError, match="topic"):
        Outbox(store.outbox, topic="")
    with pytest.raises(TypeError, match="Event"):
        Outbox(store.outbox, topic="t").add(None, {"type": "org.created"})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="store"):
        Outbox(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_bytes"):
        Outbox(store.outbox, max_bytes=0)
    assert (await store.outbox.status()).pending == 0


async def test_add_many_of_nothing_writes_nothing() -> None:
    store = MemoryStore()
    Outbox(store.outbox, topic="t").add_many(None, [])
    assert (await store.outbox.status()).pending == 0
    assert "topic='t'" in repr(Outbox(store.outbox, topic="t"))


async def test_inbox_accepts_events_or_ids_only() -> None:
    store = MemoryStore()
    inbox = Inbox(store.inbox, consumer="billing")
    event_id = uuid.uuid4()
    assert await inbox.record(event_id)
    assert await inbox.seen(event_id)
    assert await inbox.forget(event_id)
    with pytest.raises(TypeError, match="UUID"):
        await inbox.record(str(event_id))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="consumer"):
        Inbox(store.inbox, consumer="")
    with pytest.raises(ConfigurationError, match="store"):
        Inbox(object(), consumer="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="older_than"):
        await inbox.purge(older_than="1h")  # type: ignore[arg-type]
    assert "billing" in repr(inbox)


async def test_inbox_marks_inside_a_memory_transaction() -> None:
    store = MemoryStore()
    inbox = Inbox(store.inbox, consumer="billing")
    one = event()
    with store.transaction() as transaction:
        assert await inbox.amark(transaction, one)
    assert await inbox.seen(one)
    assert await inbox.purge(older_than=0) == 1


async def test_outbox_aadd_in_a_transaction() -> None:
    store = MemoryStore()
    with store.transaction() as transaction:
        await Outbox(store.outbox, topic="t").aadd(transaction, event())
        assert (await store.outbox.status()).pending == 0  # not before the commit
    assert (await store.outbox.status()).pending == 1
    with pytest.raises(TypeError, match=r"MemoryStore\.transaction"):
        store.outbox.add("a connection string", [])
    with pytest.raises(RuntimeError, match="already"):
        transaction.commit()


def test_async_helpers_run_on_anyio() -> None:
    store = MemoryStore()
    anyio.run(Outbox(store.outbox).publish, "t", event())
    assert anyio.run(store.outbox.status).pending == 1
