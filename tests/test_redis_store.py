"""RedisStore against a real Redis: what only Redis does, beyond the contract suites.

The cross-backend contracts (tests/contract/) run on Redis too; these tests cover the
Redis side: concurrency across clients, expiry on Redis's clock, what is in Redis and
what happens when it is tampered with, outages, and the key prefix.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilience_kit import ConfigurationError
from resilience_kit.errors import (
    CorruptRecordError,
    StoreError,
    StoreUnavailableError,
)
from resilience_kit.messaging import Event
from resilience_kit.messaging._protocols import DeadLetterStore, IdempotencyStore, InboxStore
from resilience_kit.messaging._records import DeadLetter, DeadLetterFilter
from tests.servers import free_port

redis = pytest.importorskip("redis", reason="the redis extra is not installed")
from resilience_kit.stores.redis import RedisStore  # noqa: E402

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def _delete_prefix(url: str, prefix: str) -> None:
    raw = redis.Redis.from_url(url)
    try:
        for key in raw.scan_iter(match=f"{prefix}*", count=1000):
            raw.delete(key)
    finally:
        raw.close()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A fresh key prefix; whatever a test left under it is deleted afterwards."""
    unique = f"rs{uuid.uuid4().hex[:12]}:"
    yield unique
    _delete_prefix(redis_url, unique)


@pytest.fixture
def store(redis_url: str, prefix: str) -> Iterator[RedisStore]:
    with RedisStore(url=redis_url, prefix=prefix) as opened:
        yield opened


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    """A raw client, to look at and tamper with what the store keeps."""
    raw = redis.Redis.from_url(redis_url)
    yield raw
    raw.close()


class RecordingRedis(redis.Redis):
    """A client that remembers every command it sent (name and arguments)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(args)
        return super().execute_command(*args, **options)


def letter(
    *,
    topic: str = "orgs",
    source: str = "outbox",
    data: bytes | None = None,
    error: BaseException | None = None,
    at: datetime = T0,
) -> DeadLetter:
    if data is None:
        data = Event(type=f"{topic}.failed", key="k:1", payload={"n": 1}).to_json()
    return DeadLetter.create(
        source=source,
        topic=topic,
        data=data,
        error=error or ValueError("it broke"),
        attempts=3,
        now=at,
    )


def down_store() -> RedisStore:
    """A store pointed at a port nothing listens on."""
    return RedisStore(url=f"redis://127.0.0.1:{free_port()}/0", prefix="down:")


# -- construction -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({}, "client"),
        ({"url": "redis://x", "client": object()}, "client"),
        ({"url": "redis://x", "prefix": ""}, "prefix"),
        ({"url": "redis://x", "inbox_ttl": 0}, "inbox_ttl"),
        ({"url": "redis://x", "inbox_ttl": float("inf")}, "inbox_ttl"),
        ({"url": "redis://x?decode_responses=True"}, "client"),
    ],
)
def test_bad_parameters_are_refused(options: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisStore(**options)
    assert info.value.parameter == parameter


def test_a_client_that_decodes_responses_is_refused(redis_url: str) -> None:
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisStore(client=decoding)
    assert decoding.ping()  # a client we were given is never closed
    decoding.close()


def test_components_implement_the_protocols_and_there_is_no_outbox(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix="orders")
    assert store.prefix == "orders:"
    assert repr(store) == "RedisStore(prefix='orders:')"
    assert repr(store.dead_letters) == "RedisStore(prefix='orders:').dead_letters"
    assert isinstance(store.dead_letters, DeadLetterStore)
    assert isinstance(store.inbox, InboxStore)
    assert isinstance(store.idempotency, IdempotencyStore)
    assert store.inbox.ttl == 7 * 86_400
    assert not hasattr(store, "outbox")  # Redis cannot share the caller's transaction
    store.close()


@pytest.mark.anyio
async def test_close_closes_only_a_client_it_made(redis_url: str, prefix: str) -> None:
    given_client = redis.Redis.from_url(redis_url)
    with RedisStore(client=given_client, prefix=prefix) as store:
        assert await store.inbox.record("c", uuid.uuid4())
    assert given_client.ping()  # still usable: it was not ours to close
    given_client.close()


# -- idempotency ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_one_of_a_thousand_concurrent_claims_wins(redis_url: str, prefix: str) -> None:
    # Two stores with their own clients and connection pools: as two processes.
    stores = [RedisStore(redis_url, prefix=prefix), RedisStore(redis_url, prefix=prefix)]
    records: dict[str, Any] = {}

    async def claim(number: int) -> None:
        token = f"token-{number}"
        records[token] = await stores[number % 2].idempotency.claim(
            "order-17", "fp", token=token, lock_for=30
        )

    try:
        async with anyio.create_task_group() as group:
            for number in range(1_000):
                group.start_soon(claim, number)
        winners = [token for token, record in records.items() if record.token == token]
        assert len(records) == 1_000
        assert len(winners) == 1
        assert {record.token for record in records.values()} == set(winners)
        stored = await stores[0].idempotency.get("order-17")
        assert stored is not None
        assert stored.token == winners[0]
    finally:
        for store in stores:
            store.close()


@pytest.mark.anyio
async def test_complete_and_release_are_fenced_by_the_token(store: RedisStore) -> None:
    idempotency = store.idempotency
    won = await idempotency.claim("k", "fp", token="mine", lock_for=30)
    assert (won.token, won.status, won.result) == ("mine", "in_progress", None)
    duplicate = await idempotency.claim("k", "other-fp", token="theirs", lock_for=30)
    assert (duplicate.token, duplicate.fingerprint) == ("mine", "fp")
    assert not await idempotency.complete("k", token="theirs", result=b"x", ttl=60)
    assert not await idempotency.release("k", token="theirs")
    assert await idempotency.complete("k", token="mine", result=b"done", ttl=60)
    assert not await idempotency.complete("k", token="mine", result=b"again", ttl=60)
    assert not await idempotency.release("k", token="mine")  # completed: kept
    record = await idempotency.get("k")
    assert record is not None
    assert (record.status, record.result, record.token) == ("completed", b"done", "mine")
    assert not await idempotency.complete("absent", token="mine", result=b"", ttl=60)
    assert not await idempotency.release("absent", token="mine")


@pytest.mark.anyio
async def test_release_lets_the_next_call_run(store: RedisStore) -> None:
    await store.idempotency.claim("k", "fp", token="first", lock_for=30)
    assert await store.idempotency.release("k", token="first")
    assert await store.idempotency.get("k") is None
    again = await store.idempotency.claim("k", "fp", token="second", lock_for=30)
    assert again.token == "second"


@pytest.mark.anyio
async def test_expiry_is_a_ttl_on_redis_clock(store: RedisStore, client: Any) -> None:
    key = f"{store.prefix}idem:k"
    claimed = await store.idempotency.claim("k", "fp", token="t", lock_for=30)
    assert claimed.expires_in == 30.0
    assert 29_000 < client.pttl(key) <= 30_000  # Redis holds the expiry, not the caller
    held = await store.idempotency.get("k")
    assert held is not None
    assert 29.0 < held.expires_in <= 30.0
    await store.idempotency.complete("k", token="t", result=b"r", ttl=3_600)
    assert 3_599_000 < client.pttl(key) <= 3_600_000
    done = await store.idempotency.get("k")
    assert done is not None
    assert 3_599.0 < done.expires_in <= 3_600.0


@pytest.mark.anyio
async def test_a_crashed_claim_expires_and_its_token_is_fenced_out(
    store: RedisStore, client: Any
) -> None:
    await store.idempotency.claim("k", "fp", token="crashed", lock_for=30)
    # The lock runs out: an expiry in the past by Redis's own clock (no sleeping).
    seconds, micros = client.time()
    assert client.pexpireat(f"{store.prefix}idem:k", seconds * 1000 + micros // 1000 - 1)
    assert await store.idempotency.get("k") is None
    retry = await store.idempotency.claim("k", "fp", token="retry", lock_for=30)
    assert retry.token == "retry"
    assert not await store.idempotency.complete("k", token="crashed", result=b"late", ttl=60)
    assert not await store.idempotency.release("k", token="crashed")
    assert await store.idempotency.complete("k", token="retry", result=b"ok", ttl=60)
    record = await store.idempotency.get("k")
    assert record is not None
    assert record.result == b"ok"


@pytest.mark.anyio
@pytest.mark.parametrize("lock_for", [0.0, -5.0])
async def test_zero_durations_expire_at_once(store: RedisStore, lock_for: float) -> None:
    won = await store.idempotency.claim("k", "fp", token="a", lock_for=lock_for)
    assert won.token == "a"
    assert won.expires_in <= 0
    assert await store.idempotency.get("k") is None
    assert (await store.idempotency.claim("k", "fp", token="b", lock_for=30)).token == "b"
    assert await store.idempotency.complete("k", token="b", result=b"r", ttl=lock_for)
    assert await store.idempotency.get("k") is None  # stored already expired
    assert (await store.idempotency.claim("k", "fp", token="c", lock_for=30)).token == "c"
    assert await store.idempotency.purge_expired() == 0  # Redis removes expired keys itself
    forever = await store.idempotency.claim("f", "fp", token="d", lock_for=float("inf"))
    assert forever.expires_in > 10**11


@pytest.mark.anyio
async def test_results_are_kept_byte_for_byte(store: RedisStore) -> None:
    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        key=st.text(min_size=1, max_size=40),
        result=st.binary(max_size=300),
        fingerprint=st.text(max_size=20),
    )
    def check(key: str, result: bytes, fingerprint: str) -> None:
        async def round_trip() -> None:
            token = uuid.uuid4().hex
            unique = f"{key}/{token}"
            await store.idempotency.claim(unique, fingerprint, token=token, lock_for=30)
            assert await store.idempotency.complete(unique, token=token, result=result, ttl=60)
            record = await store.idempotency.get(unique)
            assert record is not None
            assert (record.key, record.fingerprint, record.status, record.token) == (
                unique,
                fingerprint,
                "completed",
                token,
            )
            assert record.result == result
            duplicate = await store.idempotency.claim(unique, "other", token="x", lock_for=30)
            assert (duplicate.token, duplicate.result) == (token, result)

        anyio.from_thread.run(round_trip)

    await anyio.to_thread.run_sync(check)  # hypothesis drives sync code


@pytest.mark.anyio
@pytest.mark.parametrize(
    "tamper",
    [
        lambda c, k: c.set(k, b"garbage"),
        lambda c, k: c.rpush(k, b"a list"),
        lambda c, k: c.hset(k, mapping={"fingerprint": "f", "status": "weird", "token": "t"}),
        lambda c, k: c.hset(k, mapping={"fingerprint": "f", "status": "in_progress"}),
        lambda c, k: c.hset(k, mapping={"fingerprint": "f", "status": "completed", "token": "t"}),
        lambda c, k: c.hset(
            k, mapping={"fingerprint": b"\xff", "status": "completed", "token": "t", "result": "r"}
        ),
    ],
)
async def test_a_corrupted_record_is_reported_and_left_alone(
    store: RedisStore, client: Any, tamper: Any
) -> None:
    key = f"{store.prefix}idem:k"
    tamper(client, key)
    before = client.dump(key)
    with pytest.raises(CorruptRecordError) as info:
        await store.idempotency.get("k")
    assert info.value.record == key
    with pytest.raises(CorruptRecordError):
        await store.idempotency.claim("k", "f", token="t2", lock_for=30)
    assert not await store.idempotency.complete("k", token="t", result=b"r", ttl=60)
    assert not await store.idempotency.release("k", token="t")
    assert client.dump(key) == before  # nothing rewritten or deleted


@pytest.mark.anyio
async def test_an_empty_result_is_a_result(store: RedisStore) -> None:
    await store.idempotency.claim("k", "fp", token="t", lock_for=30)
    assert await store.idempotency.complete("k", token="t", result=b"", ttl=60)
    record = await store.idempotency.get("k")
    assert record is not None
    assert (record.status, record.result) == ("completed", b"")


# -- inbox -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_one_of_many_concurrent_records_is_first(redis_url: str, prefix: str) -> None:
    stores = [RedisStore(redis_url, prefix=prefix), RedisStore(redis_url, prefix=prefix)]
    event_id = uuid.uuid4()
    outcomes: list[bool] = []

    async def record(number: int) -> None:
        outcomes.append(await stores[number % 2].inbox.record("billing", event_id))

    try:
        async with anyio.create_task_group() as group:
            for number in range(200):
                group.start_soon(record, number)
    finally:
        for store in stores:
            store.close()
    assert sorted(outcomes) == [False] * 199 + [True]


@pytest.mark.anyio
async def test_mark_refuses_to_pretend_it_joins_a_transaction(store: RedisStore) -> None:
    with pytest.raises(TypeError, match=r"inbox\.record"):
        store.inbox.mark(None, "billing", uuid.uuid4())
    with pytest.raises(TypeError, match="SQL store"):
        await store.inbox.amark(object(), "billing", uuid.uuid4())


def _age(client: Any, key: str, member: str, seconds: float) -> None:
    """Make a record look ``seconds`` old by Redis's clock (as if recorded back then)."""
    now_seconds, now_micros = client.time()
    score = now_seconds * 1_000_000 + now_micros - int(seconds * 1_000_000)
    assert client.zadd(key, {member: score}, xx=True, ch=True) == 1


@pytest.mark.anyio
async def test_records_are_kept_for_the_retention_only(
    redis_url: str, prefix: str, client: Any
) -> None:
    with RedisStore(redis_url, prefix=prefix, inbox_ttl=60) as store:
        old, fresh = uuid.uuid4(), uuid.uuid4()
        assert await store.inbox.record("billing", old)
        assert await store.inbox.record("billing", fresh)
        key = f"{prefix}inbox:c:billing"
        assert 59_000 < client.pttl(key) <= 60_000  # an idle consumer's set expires too
        _age(client, key, str(old), 61)
        assert not await store.inbox.contains("billing", old)  # past the retention
        assert not await store.inbox.forget("billing", old)
        assert await store.inbox.contains("billing", fresh)
        seconds, _ = client.time()
        client.zadd(key, {str(old): (seconds - 61) * 1_000_000})  # forgotten; put back, old
        assert await store.inbox.purge(older_than=0) == 1  # the expired one is not counted
        assert not await store.inbox.contains("billing", fresh)
        assert not client.exists(key)
        assert not client.sismember(f"{prefix}inbox:consumers", "billing")


@pytest.mark.anyio
async def test_an_old_record_is_processed_again(redis_url: str, prefix: str, client: Any) -> None:
    with RedisStore(redis_url, prefix=prefix, inbox_ttl=60) as store:
        event_id = uuid.uuid4()
        assert await store.inbox.record("billing", event_id)
        _age(client, f"{prefix}inbox:c:billing", str(event_id), 60)
        assert await store.inbox.record("billing", event_id)  # redelivered after the TTL
        assert not await store.inbox.record("billing", event_id)


@pytest.mark.anyio
async def test_purge_counts_by_age_across_consumers(store: RedisStore, client: Any) -> None:
    ids = {name: [uuid.uuid4() for _ in range(3)] for name in ("billing", "audit", "a:b*c")}
    for name, event_ids in ids.items():
        for event_id in event_ids:
            assert await store.inbox.record(name, event_id)
        _age(client, f"{store.prefix}inbox:c:{name}", str(event_ids[0]), 120)
    assert await store.inbox.purge(older_than=3_600) == 0
    assert await store.inbox.purge(older_than=float("inf")) == 0
    assert await store.inbox.purge(older_than=60) == 3
    for name, event_ids in ids.items():
        assert not await store.inbox.contains(name, event_ids[0])
        assert await store.inbox.contains(name, event_ids[1])
    assert await store.inbox.purge(older_than=-1) == 6


@pytest.mark.anyio
async def test_another_type_under_a_consumers_key_is_a_corrupt_record(
    store: RedisStore, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    key = f"{store.prefix}inbox:c:billing"
    client.set(key, b"not a sorted set")
    event_id = uuid.uuid4()
    for call in (store.inbox.record, store.inbox.contains, store.inbox.forget):
        with pytest.raises(CorruptRecordError, match="holds a string, not a sorted set") as info:
            await call("billing", event_id)
        assert info.value.record == key
    assert await store.inbox.record("shipping", event_id)  # other consumers are served
    client.sadd(f"{store.prefix}inbox:consumers", "billing")
    with caplog.at_level(logging.WARNING, logger="resilience_kit"):
        assert await store.inbox.purge(older_than=-1) == 1  # shipping's record; billing skipped
    assert key in caplog.text
    assert client.get(key) == b"not a sorted set"  # left as it was


@pytest.mark.anyio
async def test_redis_refusing_an_operation_is_a_store_error(store: RedisStore, client: Any) -> None:
    # The registry of consumers, not a consumer's records (those are corrupt records).
    client.set(f"{store.prefix}inbox:consumers", b"not a set")
    with pytest.raises(StoreError) as info:
        await store.inbox.record("billing", uuid.uuid4())
    assert not isinstance(info.value, StoreUnavailableError)
    assert "WRONGTYPE" in str(info.value)


# -- dead letters --------------------------------------------------------------------------


async def _put_many(store: RedisStore, letters: list[DeadLetter]) -> None:
    async with anyio.create_task_group() as group:
        for item in letters:
            group.start_soon(store.dead_letters.put, item)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # Redis does the work: one loop is enough
async def test_a_large_queue_pages_and_filters_like_the_reference(store: RedisStore) -> None:
    topics = ("orgs", "billing", "mail")
    errors = (ValueError("v"), TimeoutError("t"), KeyError("k"))
    letters = [
        letter(
            topic=topics[n % 3],
            source="outbox" if n % 2 else "consumer:mailer",
            error=errors[n % 5 % 3],
            at=T0 + timedelta(seconds=n),
            data=b"poison" if n % 7 == 0 else None,
        )
        for n in range(1_203)
    ]
    await _put_many(store, letters)
    ordered = sorted(letters, key=lambda item: item.id)
    dead = store.dead_letters
    assert await dead.count(DeadLetterFilter()) == 1_203
    filters = [
        DeadLetterFilter(),
        DeadLetterFilter(topic="billing"),
        DeadLetterFilter(source="consumer:mailer", error_type="TimeoutError"),
        DeadLetterFilter(event_type="mail.failed"),
        DeadLetterFilter(since=T0 + timedelta(seconds=100), until=T0 + timedelta(seconds=900)),
        DeadLetterFilter(ids=tuple(item.id for item in letters[::3])),
    ]
    for where in filters:
        expected = [item for item in ordered if where.matches(item)]
        pages: list[DeadLetter] = []
        after = None
        while True:
            page = await dead.list(where, limit=137, after=after)
            assert len(page) <= 137
            if not page:
                break
            pages.extend(page)
            after = page[-1].id
        assert [item.id for item in pages] == [item.id for item in expected], where
        assert pages == expected
        assert await dead.count(where) == len(expected)
    removed = await dead.purge(DeadLetterFilter(topic="orgs"))
    assert removed == len([item for item in letters if item.topic == "orgs"])
    assert await dead.purge(DeadLetterFilter()) == 1_203 - removed  # two pages of deletes
    assert await dead.count(DeadLetterFilter()) == 0
    assert await dead.purge(DeadLetterFilter()) == 0


@pytest.mark.anyio
async def test_a_short_list_reads_only_a_short_page(redis_url: str, prefix: str) -> None:
    recording = RecordingRedis.from_url(redis_url)
    with RedisStore(client=recording, prefix=prefix) as store:
        await _put_many(store, [letter(at=T0 + timedelta(seconds=n)) for n in range(50)])
        recording.sent.clear()
        assert len(await store.dead_letters.list(DeadLetterFilter(), limit=5)) == 5
        assert await store.dead_letters.list(DeadLetterFilter(), limit=0) == []
        ranges = [args for args in recording.sent if args[0] == "ZRANGEBYLEX"]
        assert len(ranges) == 1
        assert "5" in [str(arg) for arg in ranges[0]]  # LIMIT 0 5: five letters fetched
    recording.close()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"v": 99}', "version"),
        (b'{"v": 1, "id": "00000000-0000-0000-0000-000000000000"}', "id inside"),
    ],
)
async def test_a_corrupted_letter_is_skipped_by_list_and_raised_by_get(
    store: RedisStore, client: Any, caplog: pytest.LogCaptureFixture, raw: bytes, problem: str
) -> None:
    good, bad = letter(at=T0), letter(at=T0 + timedelta(seconds=1))
    await store.dead_letters.put(good)
    await store.dead_letters.put(bad)
    key = f"{store.prefix}dl:{bad.id}"
    client.set(key, raw)
    with pytest.raises(CorruptRecordError, match=problem) as info:
        await store.dead_letters.get(bad.id)
    assert info.value.record == key
    with caplog.at_level(logging.WARNING, logger="resilience_kit"):
        assert await store.dead_letters.list(DeadLetterFilter()) == [good]
    assert key in caplog.text
    assert await store.dead_letters.count(DeadLetterFilter(topic="orgs")) == 1
    assert await store.dead_letters.count(DeadLetterFilter()) == 2  # it still exists
    assert await store.dead_letters.purge(DeadLetterFilter(topic="orgs")) == 1
    assert client.get(key) == raw  # nothing deleted or rewritten
    assert await store.dead_letters.delete([bad.id]) == 1  # unless asked by id


@pytest.mark.anyio
@pytest.mark.parametrize(
    "change",
    [
        {"attempts": True},
        {"attempts": "3"},
        {"data": "not base64!"},
        {"dead_lettered_at": "2026-03-01T12:00:00"},
        {"dead_lettered_at": "yesterday"},
        {"key": 5},
        {"topic": None},
    ],
)
async def test_a_letter_with_a_wrong_field_is_corrupt(
    store: RedisStore, client: Any, change: dict[str, Any]
) -> None:
    item = letter()
    await store.dead_letters.put(item)
    key = f"{store.prefix}dl:{item.id}"
    fields = json.loads(client.get(key))
    client.set(key, json.dumps({**fields, **change}))
    with pytest.raises(CorruptRecordError):
        await store.dead_letters.get(item.id)
    assert await store.dead_letters.list(DeadLetterFilter()) == []


@pytest.mark.anyio
async def test_another_type_under_a_letter_key_is_corrupt(store: RedisStore, client: Any) -> None:
    item = letter()
    await store.dead_letters.put(item)
    key = f"{store.prefix}dl:{item.id}"
    client.delete(key)
    client.hset(key, "a", "b")
    with pytest.raises(CorruptRecordError, match="hash"):
        await store.dead_letters.get(item.id)
    await store.dead_letters.put(item)  # a put never overwrites what is there
    assert client.type(key) == b"hash"
    assert await store.dead_letters.purge(DeadLetterFilter()) == 1  # everything: it goes too
    assert not client.exists(key)


@pytest.mark.anyio
async def test_a_put_keeps_the_first_letter_with_an_id(store: RedisStore) -> None:
    first = letter(topic="first")
    second = DeadLetter(
        id=first.id,
        source="outbox",
        topic="second",
        data=b"x",
        error_type="builtins.KeyError",
        error_message="",
        traceback="",
        attempts=1,
        first_failed_at=T0,
        last_failed_at=T0,
        dead_lettered_at=T0,
    )
    await store.dead_letters.put(first)
    await store.dead_letters.put(second)
    assert await store.dead_letters.get(first.id) == first


@pytest.mark.anyio
async def test_every_text_survives(store: RedisStore) -> None:
    weird = DeadLetter.create(
        source="consumer:\u00e9\u6f22",
        topic="t\x00pic",
        data=b"\x00\xff",
        error=ValueError("lone surrogate \udc80, emoji \U0001f4a5, NUL \x00"),
        attempts=0,
        now=datetime(2026, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=1))),
        key="k\u2028",
    )
    await store.dead_letters.put(weird)
    stored = await store.dead_letters.get(weird.id)
    assert stored == weird
    assert stored is not None
    assert stored.error_message == weird.error_message


@pytest.mark.anyio
async def test_a_dangling_index_entry_is_dropped(store: RedisStore, client: Any) -> None:
    item = letter()
    await store.dead_letters.put(item)
    ghost = uuid.uuid4()
    client.zadd(f"{store.prefix}dl:index", {str(ghost): 0})  # as if its key were evicted
    assert await store.dead_letters.count(DeadLetterFilter()) == 2
    assert await store.dead_letters.list(DeadLetterFilter()) == [item]
    assert await store.dead_letters.count(DeadLetterFilter()) == 1
    assert await store.dead_letters.get(ghost) is None


@pytest.mark.anyio
async def test_delete_counts_what_existed_once(store: RedisStore) -> None:
    items = [letter() for _ in range(3)]
    await _put_many(store, items)
    assert await store.dead_letters.delete([items[0].id, items[0].id, uuid.uuid4()]) == 1
    assert await store.dead_letters.delete([]) == 0
    assert await store.dead_letters.delete([item.id for item in items]) == 2
    assert await store.dead_letters.count(DeadLetterFilter()) == 0


# -- outages, prefixes -------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_unreachable_redis_is_a_typed_error() -> None:
    calls = [
        lambda s: s.idempotency.claim("k", "f", token="t", lock_for=1),
        lambda s: s.idempotency.complete("k", token="t", result=b"", ttl=1),
        lambda s: s.idempotency.release("k", token="t"),
        lambda s: s.idempotency.get("k"),
        lambda s: s.inbox.record("c", uuid.uuid4()),
        lambda s: s.inbox.contains("c", uuid.uuid4()),
        lambda s: s.inbox.forget("c", uuid.uuid4()),
        lambda s: s.inbox.purge(older_than=0),
        lambda s: s.dead_letters.put(letter()),
        lambda s: s.dead_letters.get(uuid.uuid4()),
        lambda s: s.dead_letters.list(DeadLetterFilter()),
        lambda s: s.dead_letters.count(DeadLetterFilter()),
        lambda s: s.dead_letters.count(DeadLetterFilter(topic="x")),
        lambda s: s.dead_letters.delete([uuid.uuid4()]),
        lambda s: s.dead_letters.purge(DeadLetterFilter()),
    ]
    with down_store() as store:
        for call in calls:
            with pytest.raises(StoreUnavailableError) as info:
                await call(store)
            assert isinstance(info.value, ConnectionError)
            assert isinstance(info.value.__cause__, redis.ConnectionError)
            assert info.value.store == "RedisStore(prefix='down:')"


@pytest.mark.anyio
async def test_prefixes_isolate_stores(redis_url: str) -> None:
    prefixes = [f"iso{uuid.uuid4().hex[:10]}:", f"iso{uuid.uuid4().hex[:10]}:"]
    recording = RecordingRedis.from_url(redis_url)
    ours = RedisStore(client=recording, prefix=prefixes[0])
    theirs = RedisStore(redis_url, prefix=prefixes[1])
    try:
        event_id = uuid.uuid4()
        item = letter()
        for store in (ours, theirs):
            assert await store.inbox.record("billing", event_id)
            await store.dead_letters.put(item)
            claim = await store.idempotency.claim("k", "f", token=store.prefix, lock_for=30)
            assert claim.token == store.prefix
        assert await ours.dead_letters.purge(DeadLetterFilter()) == 1
        assert await ours.inbox.purge(older_than=-1) == 1
        assert await ours.inbox.forget("billing", event_id) is False
        assert await ours.idempotency.release("k", token=prefixes[0])
        assert await theirs.dead_letters.get(item.id) == item
        assert await theirs.inbox.contains("billing", event_id)
        held = await theirs.idempotency.get("k")
        assert held is not None
        assert held.token == prefixes[1]

        # Every key ours touched carries its prefix, and nothing was flushed.
        def text(value: Any) -> str:
            return value.decode() if isinstance(value, bytes) else str(value)

        touched: list[str] = []
        for args in recording.sent:
            command = str(args[0]).upper()
            assert "FLUSH" not in command
            if command in {"EVALSHA", "EVAL"}:
                touched += [text(key) for key in args[3 : 3 + int(args[2])]]
            elif command != "SCRIPT LOAD" and command != "SCRIPT":
                touched.append(text(args[1]))
        assert touched
        assert [key for key in touched if not key.startswith(prefixes[0])] == []
    finally:
        ours.close()
        theirs.close()
        recording.close()
        for prefix in prefixes:
            _delete_prefix(redis_url, prefix)
