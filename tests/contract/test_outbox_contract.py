"""The OutboxStore contract, run against every backend that holds an outbox.

Times are the store's own (the database clock for SQL backends), so lease expiry is
exercised with ``lease_for=0`` (expired at once) and "not yet due" with an hour's delay:
no test waits.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from resilience_kit.messaging import (
    DeadLetter,
    Event,
    Outbox,
    OutboxEntry,
    OutboxMessage,
    OutboxStore,
)
from tests.contract.conftest import Backend

pytestmark = pytest.mark.anyio

HOUR = 3600.0


def event(key: str = "k1", n: int = 0, **payload: Any) -> Event:
    return Event(type="test.happened", key=key, payload={"n": n, **payload})


def add(backend: Backend, *events: Event, topic: str = "t") -> None:
    with backend.transaction() as connection:
        Outbox(backend.store.outbox, topic=topic).add_many(connection, events)


def ns(messages: list[OutboxMessage]) -> list[tuple[str, int]]:
    return [(m.key, m.event().payload["n"]) for m in messages]


async def test_the_store_implements_the_protocol(sql_like_backend: Backend) -> None:
    assert isinstance(sql_like_backend.store.outbox, OutboxStore)


async def test_committed_rows_are_claimed_exactly_as_written(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    written = event("org:ü", 1, text="nul \x00 and ünïcode", nested={"a": [1, 2.5, None, True]})
    add(sql_like_backend, written, topic="orgs")
    [message] = await store.claim(limit=10, lease_for=HOUR)
    assert message.topic == "orgs"
    assert message.key == "org:ü"
    assert message.data == written.to_json()
    assert message.event() == written
    assert message.attempts == 1
    assert message.lease
    assert message.last_error is None
    assert message.created_at.utcoffset() is not None


async def test_a_rolled_back_transaction_leaves_nothing(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    with pytest.raises(RuntimeError), sql_like_backend.transaction() as connection:
        Outbox(store, topic="t").add(connection, event())
        raise RuntimeError("the business write failed")
    assert await store.claim(limit=10, lease_for=HOUR) == []
    assert (await store.status()).backlog == 0


async def test_nothing_is_claimable_before_the_commit(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    with sql_like_backend.transaction() as connection:
        Outbox(store, topic="t").add(connection, event())
        # Another connection (the relay's) must not see the uncommitted row.
        claimed_inside = await store.claim(limit=10, lease_for=HOUR)
    assert claimed_inside == []
    assert len(await store.claim(limit=10, lease_for=HOUR)) == 1


async def test_rows_of_a_key_come_in_order_and_as_a_prefix(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, *(event("a", n) for n in range(5)), event("b", 0))
    claimed = await store.claim(limit=3, lease_for=HOUR)
    by_key: dict[str, list[int]] = {}
    for key, n in ns(claimed):
        by_key.setdefault(key, []).append(n)
    assert len(claimed) == 3
    for key, numbers in by_key.items():
        assert numbers == list(range(len(numbers))), (key, numbers)


async def test_a_key_is_never_leased_to_two_claims(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, *(event("a", n) for n in range(3)), event("b", 0))
    first = await store.claim(limit=1, lease_for=HOUR)
    second = await store.claim(limit=10, lease_for=HOUR)
    assert ns(first) == [("a", 0)]
    assert ns(second) == [("b", 0)]  # a's later rows wait for its head
    await store.mark_published(first)
    assert ns(await store.claim(limit=10, lease_for=HOUR)) == [("a", 1), ("a", 2)]


async def test_concurrent_claims_never_share_a_row(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, *(event(f"k{n % 10}", n) for n in range(60)))
    results: list[list[OutboxMessage]] = []

    async def claimer() -> None:
        results.append(await store.claim(limit=7, lease_for=HOUR))

    async with anyio.create_task_group() as group:
        for _ in range(6):
            group.start_soon(claimer)
    positions = [m.position for batch in results for m in batch]
    assert len(positions) == len(set(positions))
    keys_per_claim = [{m.key for m in batch} for batch in results]
    for i, keys in enumerate(keys_per_claim):
        for other in keys_per_claim[i + 1 :]:
            assert not keys & other  # no key in two live claims


async def test_mark_published_finishes_rows(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, event("a", 0), event("b", 0))
    claimed = await store.claim(limit=10, lease_for=HOUR)
    assert await store.mark_published(claimed) == 2
    assert await store.claim(limit=10, lease_for=0) == []
    status = await store.status()
    assert (status.pending, status.leased, status.published) == (0, 0, 2)


async def test_an_expired_lease_is_reclaimed_and_fenced(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, event("a", 0))
    [stale] = await store.claim(limit=10, lease_for=0)  # expires at once
    [fresh] = await store.claim(limit=10, lease_for=HOUR)
    assert fresh.position == stale.position
    assert fresh.lease != stale.lease
    assert fresh.attempts == 2
    # Every write under the stale lease is a no-op.
    assert await store.mark_published([stale]) == 0
    assert not await store.retry_later(stale, error="x", delay=0)
    assert await store.release([stale]) == 0
    assert not await store.block(stale, error="x")
    letter = DeadLetter.create(
        source="outbox", topic="t", data=stale.data, error=OSError(), attempts=1
    )
    assert not await store.dead_letter(stale, letter)
    assert await sql_like_backend.store.dead_letters.get(letter.id) is None
    assert await store.mark_published([fresh]) == 1


async def test_retry_later_holds_the_row_and_its_key(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, event("a", 0), event("a", 1), event("b", 0))
    claimed = await store.claim(limit=1, lease_for=HOUR)
    assert ns(claimed) == [("a", 0)]
    assert await store.retry_later(claimed[0], error="broker down", delay=HOUR)
    assert ns(await store.claim(limit=10, lease_for=HOUR)) == [("b", 0)]  # a waits
    status = await store.status()
    assert status.pending == 2  # a0 (not due) and a1


async def test_a_retried_row_keeps_its_error_and_first_failure(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, event("a", 0))
    [first] = await store.claim(limit=10, lease_for=HOUR)
    assert await store.retry_later(first, error="ConnectionError: down", delay=0)
    [second] = await store.claim(limit=10, lease_for=HOUR)
    assert second.attempts == 2
    assert second.last_error == "ConnectionError: down"
    assert second.first_failed_at is not None
    assert await store.retry_later(second, error="again", delay=0)
    [third] = await store.claim(limit=10, lease_for=HOUR)
    assert third.first_failed_at == second.first_failed_at
    assert third.last_error == "again"


async def test_release_gives_the_attempt_back(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, event("a", 0), event("a", 1))
    claimed = await store.claim(limit=10, lease_for=HOUR)
    assert await store.release(claimed[1:]) == 1
    assert await store.mark_published(claimed[:1]) == 1
    [again] = await store.claim(limit=10, lease_for=HOUR)
    assert ns([again]) == [("a", 1)]
    assert again.attempts == 1


async def test_a_blocked_row_blocks_its_key_until_requeued(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, event("a", 0), event("a", 1), event("b", 0))
    [head] = await store.claim(limit=1, lease_for=HOUR)
    assert await store.block(head, error="poison")
    assert ns(await store.claim(limit=10, lease_for=HOUR)) == [("b", 0)]
    assert (await store.status()).blocked == 1
    assert await store.requeue() == 1
    again = await store.claim(limit=10, lease_for=HOUR)
    assert ns(again) == [("a", 0), ("a", 1)]
    assert again[0].attempts == 1  # attempts reset


async def test_requeue_of_chosen_rows_only(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, event("a", 0), event("b", 0))
    claimed = await store.claim(limit=10, lease_for=HOUR)
    for message in claimed:
        assert await store.block(message, error="x")
    a_position = next(m.position for m in claimed if m.key == "a")
    assert await store.requeue(positions=[a_position]) == 1
    assert ns(await store.claim(limit=10, lease_for=HOUR)) == [("a", 0)]
    assert (await store.status()).blocked == 1


async def test_requeue_replays_published_rows(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, event("a", 0))
    claimed = await store.claim(limit=10, lease_for=HOUR)
    await store.mark_published(claimed)
    assert await store.requeue(positions=[claimed[0].position]) == 1
    [again] = await store.claim(limit=10, lease_for=HOUR)
    assert again.position == claimed[0].position
    assert again.data == claimed[0].data
    assert await store.requeue(positions=[again.position]) == 0  # leased: left alone
    assert await store.requeue(positions=[999_999]) == 0


async def test_dead_letter_moves_the_row_atomically(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, event("a", 0), event("a", 1))
    [head] = await store.claim(limit=1, lease_for=HOUR)
    try:
        raise ConnectionError("broker refused")
    except ConnectionError as exc:
        letter = DeadLetter.create(
            source="outbox", topic=head.topic, data=head.data, error=exc, attempts=head.attempts
        )
    assert await store.dead_letter(head, letter)
    stored = await sql_like_backend.store.dead_letters.get(letter.id)
    assert stored is not None
    assert stored.data == head.data
    assert stored.event == head.event()
    assert "broker refused" in stored.traceback
    # The row is gone and the key moves on.
    assert ns(await store.claim(limit=10, lease_for=HOUR)) == [("a", 1)]
    status = await store.status()
    assert status.blocked == 0
    assert status.pending + status.leased + status.published == 1


async def test_purge_removes_only_old_published_rows(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, event("a", 0), event("b", 0))
    claimed = await store.claim(limit=10, lease_for=HOUR)
    await store.mark_published([m for m in claimed if m.key == "a"])
    assert await store.purge_published(older_than=HOUR) == 0
    assert await store.purge_published(older_than=0) == 1
    status = await store.status()
    assert (status.published, status.leased) == (0, 1)


async def test_status_reports_backlog_and_lag(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    empty = await store.status()
    assert (empty.backlog, empty.blocked, empty.oldest_pending_age) == (0, 0, 0.0)
    add(sql_like_backend, event("a", 0), event("b", 0), event("c", 0))
    await store.claim(limit=1, lease_for=HOUR)
    status = await store.status()
    assert (status.pending, status.leased) == (2, 1)
    assert status.backlog == 3
    assert status.oldest_pending_age >= 0.0


async def test_aadd_without_a_connection_commits_on_its_own(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    await store.aadd(None, [OutboxEntry.of("t", event("a", 0))])
    await Outbox(store, topic="t").publish("other", event("a", 1))
    claimed = await store.claim(limit=10, lease_for=HOUR)
    assert ns(claimed) == [("a", 0), ("a", 1)]
    assert [m.topic for m in claimed] == ["t", "other"]


async def test_a_large_backlog_is_claimed_in_batches_without_loss(
    sql_like_backend: Backend,
) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, *(event(f"k{n % 25}", n) for n in range(500)))
    seen: list[int] = []
    while batch := await store.claim(limit=64, lease_for=HOUR):
        assert len(batch) <= 64
        seen.extend(m.event().payload["n"] for m in batch)
        assert await store.mark_published(batch) == len(batch)
    assert sorted(seen) == list(range(500))
    # Per key, publication order was the add order.
    for k in range(25):
        mine = [n for n in seen if n % 25 == k]
        assert mine == sorted(mine)


async def test_wait_for_rows_returns(sql_like_backend: Backend) -> None:
    with anyio.fail_after(10):
        await sql_like_backend.store.outbox.wait_for_rows(0)


async def test_connection_types_are_checked(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    with pytest.raises((TypeError, ValueError, AttributeError)):
        store.add(object(), [OutboxEntry.of("t", event())])
    assert (await store.status()).backlog == 0


async def test_a_key_waits_while_a_later_row_is_still_leased(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, event("a", 0), event("a", 1))
    head, follower = await store.claim(limit=10, lease_for=HOUR)
    # The head is given back for a retry while its follower is still leased (a relay
    # that has not released it yet): the key must not be claimed again meanwhile.
    assert await store.retry_later(head, error="x", delay=0)
    assert await store.claim(limit=10, lease_for=HOUR) == []
    assert await store.release([follower]) == 1
    assert ns(await store.claim(limit=10, lease_for=HOUR)) == [("a", 0), ("a", 1)]


# -- listing blocked rows ---------------------------------------------------------------------


async def block_heads(store: OutboxStore, *, error: str = "poison") -> list[OutboxMessage]:
    """Claim every key's head and block it; return the blocked messages in position order."""
    heads: dict[str, OutboxMessage] = {}
    for message in await store.claim(limit=100, lease_for=HOUR):
        if message.key not in heads:
            heads[message.key] = message
    blocked = sorted(heads.values(), key=lambda m: m.position)
    for message in blocked:
        assert await store.block(message, error=f"{error} {message.key}")
    return blocked


async def test_blocked_rows_are_listed_with_their_error_and_attempts(
    sql_like_backend: Backend,
) -> None:
    store = sql_like_backend.store.outbox
    written = event("a", 0)
    add(sql_like_backend, written, event("a", 1), event("b", 0), topic="orgs")
    first, follower, other = await store.claim(limit=10, lease_for=HOUR)
    assert await store.retry_later(first, error="ConnectionError: down", delay=0)
    assert await store.release([follower]) == 1
    assert await store.mark_published([other]) == 1
    second, follower = await store.claim(limit=10, lease_for=HOUR)
    assert second.position == first.position
    assert await store.block(second, error="ValueError: poison")
    assert await store.release([follower]) == 1  # pending behind the blocked row

    [row] = await store.blocked()
    assert row.position == first.position
    assert (row.topic, row.key) == ("orgs", "a")
    assert row.event_id == written.id
    assert row.event_type == "test.happened"
    assert row.attempts == 2
    assert row.last_error == "ValueError: poison"
    assert row.created_at == second.created_at
    assert row.created_at.utcoffset() is not None
    assert row.first_failed_at is not None
    assert row.first_failed_at == second.first_failed_at


async def test_blocked_rows_page_by_position(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, *(event(f"k{n}", n) for n in range(5)), event("k0", 5))
    blocked = [m.position for m in await block_heads(store)]
    assert len(blocked) == 5

    pages: list[list[int]] = []
    after: int | None = None
    while page := await store.blocked(limit=2, after=after):
        pages.append([row.position for row in page])
        after = page[-1].position
    assert pages == [blocked[0:2], blocked[2:4], blocked[4:5]]
    assert [row.position for row in await store.blocked(after=blocked[2] - 1)] == blocked[2:]
    assert [row.position for row in await store.blocked(limit=100)] == blocked
    assert [row.key for row in await store.blocked(limit=1)] == ["k0"]
    assert await store.blocked(limit=0) == []
    assert await store.blocked(after=blocked[-1]) == []


async def test_requeued_rows_leave_the_blocked_list(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, event("a", 0), event("b", 0), event("c", 0))
    a, b, c = await block_heads(store)
    assert await store.requeue(positions=[b.position]) == 1
    listed = await store.blocked()
    assert [row.position for row in listed] == [a.position, c.position]
    assert [row.last_error for row in listed] == ["poison a", "poison c"]
    assert await store.requeue() == 2
    assert await store.blocked() == []
    assert len(await store.claim(limit=10, lease_for=HOUR)) == 3


async def test_rows_in_other_states_are_never_listed_as_blocked(
    sql_like_backend: Backend,
) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, *(event(key, 0) for key in "abcdef"), event("a", 1))
    assert await store.blocked() == []
    by_key = {m.key: m for m in await store.claim(limit=100, lease_for=HOUR)}
    assert await store.mark_published([by_key["a"]]) == 1  # published
    assert await store.retry_later(by_key["b"], error="x", delay=HOUR)  # pending, not due
    assert await store.release([by_key["c"]]) == 1  # pending, due
    letter = DeadLetter.create(
        source="outbox", topic="t", data=by_key["d"].data, error=OSError("x"), attempts=1
    )
    assert await store.dead_letter(by_key["d"], letter)  # moved to dead letters
    assert await store.block(by_key["e"], error="stuck")  # the only blocked row
    # by_key["f"] stays leased; the second row of "a" is pending.
    assert [(row.key, row.last_error) for row in await store.blocked()] == [("e", "stuck")]
    status = await store.status()
    assert status.blocked == 1


async def test_a_row_blocked_at_its_first_failure_records_when(sql_like_backend: Backend) -> None:
    store = sql_like_backend.store.outbox
    add(sql_like_backend, event("a", 0))
    [head] = await store.claim(limit=10, lease_for=HOUR)
    assert await store.block(head, error="ValueError: poison")
    [row] = await store.blocked()
    assert row.first_failed_at is not None
    assert row.first_failed_at >= head.created_at
