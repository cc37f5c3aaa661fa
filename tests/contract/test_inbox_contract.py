"""The InboxStore contract: de-duplication by event id, per consumer, on every backend."""

from __future__ import annotations

from uuid import uuid4

import pytest

from resilience_kit.messaging import Event, Inbox, InboxStore
from tests.contract.conftest import Backend

pytestmark = pytest.mark.anyio


async def test_the_store_implements_the_protocol(any_backend: Backend) -> None:
    assert isinstance(any_backend.store.inbox, InboxStore)


async def test_record_is_true_once(any_backend: Backend) -> None:
    inbox = Inbox(any_backend.store.inbox, consumer="billing")
    event = Event(type="org.created", key="org:1", payload={})
    assert not await inbox.seen(event)
    assert await inbox.record(event)
    assert not await inbox.record(event)
    assert await inbox.seen(event)


async def test_consumers_are_independent(any_backend: Backend) -> None:
    store = any_backend.store.inbox
    event_id = uuid4()
    assert await store.record("billing", event_id)
    assert await store.record("audit", event_id)
    assert not await store.contains("mailer", event_id)


async def test_forget_lets_a_replay_through(any_backend: Backend) -> None:
    store = any_backend.store.inbox
    event_id = uuid4()
    await store.record("billing", event_id)
    assert await store.forget("billing", event_id)
    assert not await store.forget("billing", event_id)
    assert await store.record("billing", event_id)


async def test_purge_by_age(any_backend: Backend) -> None:
    store = any_backend.store.inbox
    ids = [uuid4() for _ in range(3)]
    for event_id in ids:
        await store.record("billing", event_id)
    assert await store.purge(older_than=3600) == 0
    assert await store.contains("billing", ids[0])
    assert await store.purge(older_than=0) == 3
    assert not await store.contains("billing", ids[0])


async def test_mark_commits_with_the_callers_transaction(sql_like_backend: Backend) -> None:
    inbox = Inbox(sql_like_backend.store.inbox, consumer="billing")
    event = Event(type="org.created", key="org:1", payload={})
    with pytest.raises(RuntimeError), sql_like_backend.transaction() as connection:
        assert inbox.mark(connection, event)
        raise RuntimeError("the consumer's own write failed")
    assert not await inbox.seen(event)  # rolled back with it
    with sql_like_backend.transaction() as connection:
        assert inbox.mark(connection, event)
    assert await inbox.seen(event)
    with sql_like_backend.transaction() as connection:
        assert not inbox.mark(connection, event)  # a redelivery


async def test_mark_then_record_is_a_duplicate(sql_like_backend: Backend) -> None:
    inbox = Inbox(sql_like_backend.store.inbox, consumer="billing")
    event = Event(type="org.created", key="org:1", payload={})
    with sql_like_backend.transaction() as connection:
        inbox.mark(connection, event)
    assert not await inbox.record(event)
