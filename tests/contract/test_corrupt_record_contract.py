"""One rule for a corrupt stored record, on every backend (docs/stores.md).

Each test writes a corrupted record straight through the backend's own connection (SQL
``UPDATE``, Redis ``HSET``/``SET``; the in-memory store's own dict), then checks the
documented handling: `CorruptRecordError` naming the record, or a corrupted outbox row
blocked, with the other records still served and the corrupted one left as it was.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest

from resilience_kit.errors import CorruptRecordError
from resilience_kit.messaging import DeadLetter, DeadLetterFilter, Event, Outbox
from tests.contract.conftest import Backend

pytestmark = pytest.mark.anyio

HOUR = 3600.0
T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


# -- writing behind the store's back --------------------------------------------------------


def sql(backend: Backend, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run ``statement`` on the backend's database ({schema}. is the store's schema)."""
    with backend.transaction() as connection:
        if backend.name == "postgres":
            statement = statement.replace("{schema}.", f"{backend.store.schema}.")
            statement = statement.replace("?", "%s")
            cursor = connection.execute(statement, params)
            return cursor.fetchall() if cursor.description else []
        connection.execute("PRAGMA ignore_check_constraints = ON")  # a status CHECK too
        statement = statement.replace("{schema}.", "")
        return connection.execute(statement, params).fetchall()


def redis_client(backend: Backend) -> Any:
    return backend.store._io.client


def set_idempotency(backend: Backend, key: str, changes: dict[str, Any]) -> None:
    if backend.name == "memory":
        entry = backend.store.idempotency._entries[key]
        for name, value in changes.items():
            setattr(entry, name, value)
    elif backend.name == "redis":
        client, redis_key = redis_client(backend), f"{backend.store.prefix}idem:{key}"
        for name, value in changes.items():
            if value is None:
                client.hdel(redis_key, name)
            else:
                client.hset(redis_key, name, value)
    else:
        columns = ", ".join(f"{name} = ?" for name in changes)
        sql(
            backend,
            f"UPDATE {{schema}}.rk_idempotency SET {columns} WHERE key = ?",
            (*changes.values(), key),
        )


def idempotency_snapshot(backend: Backend, key: str) -> Any:
    if backend.name == "memory":
        return copy.copy(backend.store.idempotency._entries[key])
    if backend.name == "redis":
        return redis_client(backend).hgetall(f"{backend.store.prefix}idem:{key}")
    return sql(backend, "SELECT * FROM {schema}.rk_idempotency WHERE key = ?", (key,))


def set_letter(backend: Backend, letter: DeadLetter, changes: dict[str, Any]) -> None:
    if backend.name == "memory":
        letters = backend.store.dead_letters._letters
        letters[letter.id] = dataclasses.replace(letters[letter.id], **changes)
    elif backend.name == "redis":
        client, key = redis_client(backend), f"{backend.store.prefix}dl:{letter.id}"
        client.set(key, json.dumps({**json.loads(client.get(key)), **changes}))
    else:
        columns = ", ".join(f"{name} = ?" for name in changes)
        sql(
            backend,
            f"UPDATE {{schema}}.rk_dead_letters SET {columns} WHERE id = ?",
            (*changes.values(), letter.id if backend.name == "postgres" else str(letter.id)),
        )


def letter_snapshot(backend: Backend, letter_id: UUID) -> Any:
    if backend.name == "memory":
        return repr(backend.store.dead_letters._letters[letter_id])
    if backend.name == "redis":
        return redis_client(backend).get(f"{backend.store.prefix}dl:{letter_id}")
    key = letter_id if backend.name == "postgres" else str(letter_id)
    return sql(backend, "SELECT * FROM {schema}.rk_dead_letters WHERE id = ?", (key,))


def set_head_attempts(backend: Backend, key: str, attempts: int) -> int:
    """Give the first row of ``key`` a corrupt attempt count; return its position."""
    if backend.name == "memory":
        rows = backend.store.outbox._rows
        position = min(p for p, row in rows.items() if row.key == key)
        rows[position].attempts = attempts
        return position
    [(position,)] = sql(
        backend, "SELECT min(position) FROM {schema}.rk_outbox WHERE key = ?", (key,)
    )
    sql(
        backend,
        "UPDATE {schema}.rk_outbox SET attempts = ? WHERE position = ?",
        (attempts, position),
    )
    return int(position)


def letter(topic: str = "orgs", minutes: int = 0) -> DeadLetter:
    data = Event(type="org.created", key="org:1", payload={}).to_json()
    at = T0 + timedelta(minutes=minutes)
    return DeadLetter.create(
        source="outbox", topic=topic, data=data, error=ValueError("x"), attempts=3, now=at
    )


# -- idempotency records --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"status": "completed", "result": None}, "status 'completed' without a result"),
        ({"result": b"late"}, "status 'in_progress' with a result"),
        ({"status": "paused"}, "status is 'paused', not one of in_progress, completed"),
        ({"token": ""}, "token is empty"),
    ],
)
async def test_a_corrupt_idempotency_record_is_a_typed_error_and_is_kept(
    any_backend: Backend, changes: dict[str, Any], problem: str
) -> None:
    store = any_backend.store.idempotency
    await store.claim("k", "fp", token="t1", lock_for=HOUR)
    await store.claim("other", "fp", token="t2", lock_for=HOUR)
    set_idempotency(any_backend, "k", changes)
    before = idempotency_snapshot(any_backend, "k")
    with pytest.raises(CorruptRecordError, match=problem) as caught:
        await store.get("k")
    assert caught.value.record.endswith("k")
    assert repr(store).split(".")[0] in str(caught.value)  # the store is named
    with pytest.raises(CorruptRecordError, match=problem):
        await store.claim("k", "fp", token="t3", lock_for=HOUR)
    assert idempotency_snapshot(any_backend, "k") == before  # nothing rewritten or deleted
    other = await store.get("other")
    assert other is not None
    assert other.token == "t2"  # the other records are still served


# -- dead letters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"attempts": -1}, "attempts is -1, below 0"),
        ({"replays": -2}, "replays is -2, below 0"),
        ({"topic": ""}, "topic is empty"),
    ],
)
async def test_a_corrupt_dead_letter_is_raised_by_get_and_skipped_by_list(
    any_backend: Backend, changes: dict[str, Any], problem: str
) -> None:
    store = any_backend.store.dead_letters
    letters = [letter(minutes=n) for n in range(3)]
    for each in letters:
        await store.put(each)
    bad = letters[1]
    set_letter(any_backend, bad, changes)
    before = letter_snapshot(any_backend, bad.id)
    with pytest.raises(CorruptRecordError, match=problem) as caught:
        await store.get(bad.id)
    assert str(bad.id) in caught.value.record
    assert await store.list(DeadLetterFilter()) == [letters[0], letters[2]]
    assert await store.list(DeadLetterFilter(), limit=1, after=letters[0].id) == [letters[2]]
    assert await store.get(letters[2].id) == letters[2]
    assert await store.count(DeadLetterFilter()) == 3  # still there
    assert letter_snapshot(any_backend, bad.id) == before  # and left as it was
    assert await store.delete([bad.id]) == 1  # until an operator deletes it by id


# -- outbox rows ----------------------------------------------------------------------------


def add(backend: Backend, *keys: str) -> None:
    events = [Event(type="test.happened", key=key, payload={"n": n}) for n, key in enumerate(keys)]
    with backend.transaction() as connection:
        Outbox(backend.store.outbox, topic="t").add_many(connection, events)


async def test_a_corrupt_outbox_row_is_blocked_and_holds_back_only_its_key(
    sql_like_backend: Backend,
) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, "a", "a", "b")
    position = set_head_attempts(sql_like_backend, "a", -5)
    claimed = await store.claim(limit=10, lease_for=HOUR)
    assert [message.key for message in claimed] == ["b"]  # a's second row waits behind it
    [blocked] = await store.blocked()
    assert (blocked.position, blocked.key, blocked.topic) == (position, "a", "t")
    assert blocked.last_error is not None
    assert blocked.last_error.startswith("corrupted row: ")
    assert "attempts is -4, below 1" in blocked.last_error
    status = await store.status()
    assert (status.blocked, status.leased, status.pending) == (1, 1, 1)
    await store.mark_published(claimed)
    assert await store.claim(limit=10, lease_for=HOUR) == []  # still held back
    assert await store.requeue(positions=[position]) == 1  # what an operator does
    again = await store.claim(limit=10, lease_for=HOUR)
    assert [(message.key, message.attempts) for message in again] == [("a", 1), ("a", 1)]
