"""The DeadLetterStore contract, run against every backend."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from uuid import uuid4

import pytest

from resilience_kit.messaging import DeadLetter, DeadLetterFilter, DeadLetterStore, Event
from tests.contract.conftest import Backend

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def letter(
    *,
    topic: str = "orgs",
    source: str = "outbox",
    data: bytes | None = None,
    error: BaseException | None = None,
    at: datetime = T0,
    event_type: str = "org.created",
    replays: int = 0,
) -> DeadLetter:
    if data is None:
        data = Event(type=event_type, key="org:1", payload={"x": 1}).to_json()
    try:
        raise error or ValueError("it broke")
    except BaseException as exc:
        return DeadLetter.create(
            source=source,
            topic=topic,
            data=data,
            error=exc,
            attempts=3,
            first_failed_at=at - timedelta(minutes=5),
            now=at,
            replays=replays,
        )


async def test_the_store_implements_the_protocol(any_backend: Backend) -> None:
    assert isinstance(any_backend.store.dead_letters, DeadLetterStore)


async def test_a_dead_letter_round_trips_every_field(any_backend: Backend) -> None:
    store = any_backend.store.dead_letters
    original = letter(replays=2)
    await store.put(original)
    stored = await store.get(original.id)
    assert stored == original
    assert stored is not None
    assert stored.event == original.event
    assert stored.key == "org:1"
    assert stored.first_failed_at == T0 - timedelta(minutes=5)
    assert stored.last_failed_at == T0
    assert stored.traceback == original.traceback
    assert "it broke" in stored.traceback


async def test_poison_bytes_are_kept_byte_for_byte(any_backend: Backend) -> None:
    store = any_backend.store.dead_letters
    poison = letter(data=b"\x00\xff\xfe not json \x80")
    await store.put(poison)
    stored = await store.get(poison.id)
    assert stored is not None
    assert stored.data == b"\x00\xff\xfe not json \x80"
    assert stored.event is None
    assert stored.event_type is None


async def test_missing_ids_and_repeated_puts(any_backend: Backend) -> None:
    store = any_backend.store.dead_letters
    assert await store.get(uuid4()) is None
    one = letter()
    await store.put(one)
    await store.put(one)
    assert await store.count(DeadLetterFilter()) == 1


async def test_list_pages_in_id_order(any_backend: Backend) -> None:
    store = any_backend.store.dead_letters
    letters = [letter(at=T0 + timedelta(seconds=n)) for n in range(7)]
    for item in reversed(letters):
        await store.put(item)
    everything = DeadLetterFilter()
    first = await store.list(everything, limit=3)
    assert [x.id for x in first] == [x.id for x in letters[:3]]
    rest = await store.list(everything, limit=10, after=first[-1].id)
    assert [x.id for x in rest] == [x.id for x in letters[3:]]
    assert await store.list(everything, limit=10, after=letters[-1].id) == []


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (DeadLetterFilter(topic="billing"), {"billing"}),
        (DeadLetterFilter(source="consumer:mailer"), {"mailer"}),
        (DeadLetterFilter(event_type="invoice.paid"), {"billing"}),
        (DeadLetterFilter(error_type="TimeoutError"), {"mailer"}),
        (DeadLetterFilter(error_type="builtins.TimeoutError"), {"mailer"}),
        (DeadLetterFilter(since=T0 + timedelta(hours=1)), {"late"}),
        (DeadLetterFilter(until=T0 + timedelta(hours=1)), {"orgs", "billing", "mailer", "poison"}),
        (DeadLetterFilter(topic="orgs", error_type="KeyError"), set()),
    ],
)
async def test_filters(any_backend: Backend, where: DeadLetterFilter, expected: set[str]) -> None:
    store = any_backend.store.dead_letters
    named = {
        "orgs": letter(topic="orgs"),
        "billing": letter(topic="billing", event_type="invoice.paid"),
        "mailer": letter(topic="mail", source="consumer:mailer", error=TimeoutError("smtp")),
        "poison": letter(topic="mail2", data=b"garbage"),
        "late": letter(topic="late", at=T0 + timedelta(hours=2)),
    }
    for item in named.values():
        await store.put(item)
    found = {item.id for item in await store.list(where, limit=100)}
    assert found == {named[name].id for name in expected}
    assert await store.count(where) == len(expected)
    # The reference semantics agree.
    assert {n for n, item in named.items() if where.matches(item)} == expected


async def test_filter_by_ids(any_backend: Backend) -> None:
    store = any_backend.store.dead_letters
    items = [letter() for _ in range(3)]
    for item in items:
        await store.put(item)
    where = DeadLetterFilter(ids=(items[0].id, items[2].id, uuid4()))
    assert {x.id for x in await store.list(where)} == {items[0].id, items[2].id}


async def test_delete_and_purge(any_backend: Backend) -> None:
    store = any_backend.store.dead_letters
    items = [letter(topic="a"), letter(topic="a"), letter(topic="b")]
    for item in items:
        await store.put(item)
    assert await store.delete([items[0].id, uuid4()]) == 1
    assert await store.get(items[0].id) is None
    assert await store.purge(DeadLetterFilter(topic="a")) == 1
    assert [x.id for x in await store.list(DeadLetterFilter())] == [items[2].id]
    assert await store.purge(DeadLetterFilter()) == 1
    assert await store.count(DeadLetterFilter()) == 0
