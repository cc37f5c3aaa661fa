"""The IdempotencyStore contract, and @idempotent's guarantees, on every backend.

Expiry is exercised with zero and negative durations (expired at once by any clock, the
database's included), so no test waits.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from resilience_kit.errors import IdempotencyConflictError, IdempotencyInProgressError
from resilience_kit.messaging import (
    IdempotencyMiddleware,
    IdempotencyRecord,
    IdempotencyStore,
    idempotent,
)
from resilience_kit.testing import VirtualClock
from tests.contract.conftest import Backend

pytestmark = pytest.mark.anyio

FP1 = "a" * 64
FP2 = "b" * 64


def store_of(backend: Backend) -> IdempotencyStore:
    store: IdempotencyStore = backend.store.idempotency
    return store


def clock_of(backend: Backend) -> VirtualClock:
    """The clock @idempotent polls on: the store's own when it can be moved, else a
    virtual one (polls then return at once, without real sleeps)."""
    return backend.clock or VirtualClock()


async def test_the_store_implements_the_protocol(any_backend: Backend) -> None:
    assert isinstance(store_of(any_backend), IdempotencyStore)


async def test_a_first_claim_wins(any_backend: Backend) -> None:
    store = store_of(any_backend)
    assert await store.get("k") is None
    record = await store.claim("k", FP1, token="t1", lock_for=30.0)
    assert record.token == "t1"
    assert (record.key, record.fingerprint, record.status, record.result) == (
        "k",
        FP1,
        "in_progress",
        None,
    )
    assert 25.0 < record.expires_in <= 30.001
    got = await store.get("k")
    assert got is not None
    assert (got.token, got.fingerprint, got.status) == ("t1", FP1, "in_progress")


async def test_a_later_claim_gets_the_live_record_unchanged(any_backend: Backend) -> None:
    store = store_of(any_backend)
    await store.claim("k", FP1, token="t1", lock_for=30.0)
    again = await store.claim("k", FP2, token="t2", lock_for=90.0)
    assert (again.token, again.fingerprint, again.status) == ("t1", FP1, "in_progress")
    assert again.expires_in <= 30.001  # the loser's lock_for changed nothing


async def test_complete_stores_the_result_for_ttl(any_backend: Backend) -> None:
    store = store_of(any_backend)
    await store.claim("k", FP1, token="t1", lock_for=30.0)
    assert await store.complete("k", token="t1", result=b"R42", ttl=3600.0)
    record = await store.get("k")
    assert record is not None
    assert (record.status, record.result, record.token, record.fingerprint) == (
        "completed",
        b"R42",
        "t1",
        FP1,
    )
    assert 3500.0 < record.expires_in <= 3600.001
    replay = await store.claim("k", FP1, token="t2", lock_for=30.0)
    assert (replay.token, replay.status, replay.result) == ("t1", "completed", b"R42")


async def test_complete_is_fenced_by_the_token(any_backend: Backend) -> None:
    store = store_of(any_backend)
    await store.claim("k", FP1, token="t1", lock_for=30.0)
    assert not await store.complete("k", token="t2", result=b"x", ttl=3600.0)
    record = await store.get("k")
    assert record is not None
    assert (record.status, record.result) == ("in_progress", None)
    assert await store.complete("k", token="t1", result=b"first", ttl=3600.0)
    assert not await store.complete("k", token="t1", result=b"second", ttl=3600.0)
    record = await store.get("k")
    assert record is not None
    assert record.result == b"first"
    assert not await store.complete("missing", token="t1", result=b"x", ttl=3600.0)


async def test_release_frees_only_the_owners_in_progress_claim(any_backend: Backend) -> None:
    store = store_of(any_backend)
    await store.claim("k", FP1, token="t1", lock_for=30.0)
    assert not await store.release("k", token="t2")
    assert await store.get("k") is not None
    assert await store.release("k", token="t1")
    assert await store.get("k") is None
    assert not await store.release("k", token="t1")
    assert (await store.claim("k", FP2, token="t3", lock_for=30.0)).token == "t3"
    assert await store.complete("k", token="t3", result=b"done", ttl=3600.0)
    assert not await store.release("k", token="t3")  # a stored result is never released
    record = await store.get("k")
    assert record is not None
    assert record.result == b"done"


async def test_an_expired_claim_is_absent_and_can_be_taken_over(any_backend: Backend) -> None:
    store = store_of(any_backend)
    crashed = await store.claim("k", FP1, token="t1", lock_for=-1.0)
    assert crashed.token == "t1"  # won, but expired at once: a call that crashed
    assert crashed.expires_in <= 0
    assert await store.get("k") is None
    taken = await store.claim("k", FP2, token="t2", lock_for=30.0)
    assert (taken.token, taken.fingerprint) == ("t2", FP2)
    assert not await store.complete("k", token="t1", result=b"late", ttl=3600.0)
    assert not await store.release("k", token="t1")
    assert await store.complete("k", token="t2", result=b"R", ttl=3600.0)
    record = await store.get("k")
    assert record is not None
    assert (record.token, record.result) == ("t2", b"R")


async def test_an_expired_claim_can_neither_complete_nor_release(any_backend: Backend) -> None:
    # A record past its expiry is absent to every method: a call that outlived its
    # lock_for must not store a result that a concurrent retry did not wait for.
    store = store_of(any_backend)
    await store.claim("k", FP1, token="t1", lock_for=-1.0)
    assert not await store.complete("k", token="t1", result=b"late", ttl=3600.0)
    assert not await store.release("k", token="t1")
    assert await store.get("k") is None


async def test_a_zero_lock_expires_at_once(any_backend: Backend) -> None:
    store = store_of(any_backend)
    await store.claim("k", FP1, token="t1", lock_for=0.0)
    assert await store.get("k") is None
    assert (await store.claim("k", FP1, token="t2", lock_for=30.0)).token == "t2"


async def test_an_expired_result_is_absent(any_backend: Backend) -> None:
    store = store_of(any_backend)
    await store.claim("k", FP1, token="t1", lock_for=30.0)
    assert await store.complete("k", token="t1", result=b"R", ttl=0.0)
    assert await store.get("k") is None
    assert (await store.claim("k", FP2, token="t2", lock_for=30.0)).token == "t2"


async def test_purge_expired_keeps_live_records(any_backend: Backend) -> None:
    store = store_of(any_backend)
    await store.claim("running", FP1, token="t1", lock_for=30.0)
    await store.claim("done", FP1, token="t2", lock_for=30.0)
    await store.complete("done", token="t2", result=b"R", ttl=3600.0)
    await store.claim("crashed", FP1, token="t3", lock_for=-1.0)
    await store.claim("old", FP1, token="t4", lock_for=30.0)
    await store.complete("old", token="t4", result=b"R", ttl=-1.0)
    purged = await store.purge_expired()
    assert 0 <= purged <= 2  # stores that drop expired records themselves purge nothing
    assert await store.purge_expired() == 0
    assert await store.get("running") is not None
    assert await store.get("done") is not None
    assert await store.get("crashed") is None
    assert await store.get("old") is None


@pytest.mark.parametrize(
    "key",
    [
        "k" * 1_300,  # the longest a scoped key gets: namespace, escaped scope, key
        "ключ:🔑:%3A",
        "tenant*:[a-z]?\\{x}",  # glob and escape characters are just characters
        "with space",
    ],
    ids=["long", "unicode", "glob", "space"],
)
async def test_keys_are_exact(any_backend: Backend, key: str) -> None:
    store = store_of(any_backend)
    assert (await store.claim(key, FP1, token="t1", lock_for=30.0)).token == "t1"
    for other in (key.upper(), key + " ", key[:-1], "tenant"):
        if other != key:
            assert (await store.claim(other, FP1, token=f"x{other}", lock_for=30.0)).token != "t1"
    record = await store.get(key)
    assert record is not None
    assert (record.key, record.token) == (key, "t1")


async def test_results_are_kept_byte_for_byte(any_backend: Backend) -> None:
    store = store_of(any_backend)
    result = bytes(range(256)) * 8 + b"\x00" + "é".encode() + b"x" * 2_000_000
    await store.claim("k", FP1, token="t1", lock_for=30.0)
    assert await store.complete("k", token="t1", result=result, ttl=3600.0)
    record = await store.get("k")
    assert record is not None
    assert record.result == result


async def test_exactly_one_of_many_concurrent_claims_wins(any_backend: Backend) -> None:
    store = store_of(any_backend)
    records: dict[str, IdempotencyRecord] = {}

    async def claim(token: str) -> None:
        records[token] = await store.claim("k", FP1, token=token, lock_for=30.0)

    async with anyio.create_task_group() as group:
        for index in range(100):
            group.start_soon(claim, f"t{index}")
    winners = [token for token, record in records.items() if record.token == token]
    assert len(winners) == 1
    assert {record.token for record in records.values()} == set(winners)


# -- @idempotent on every backend -------------------------------------------------------


async def test_a_thousand_concurrent_calls_with_one_key_run_once(any_backend: Backend) -> None:
    """The issue's proof: 1,000 concurrent calls with one key run the function once."""
    callers = 1_000
    runs = 0
    finished = 0
    others_done = anyio.Event()

    @idempotent(store_of(any_backend), key="order_id", on_in_progress="raise", lock_for=3600.0)
    async def place(order_id: str) -> str:
        nonlocal runs
        runs += 1
        if runs == 1:
            await others_done.wait()  # stay in progress while every other call arrives
        return f"placed {order_id}"

    results: list[str] = []
    refusals: list[IdempotencyInProgressError] = []

    async def call() -> None:
        nonlocal finished
        try:
            results.append(await place("order-17"))
        except IdempotencyInProgressError as exc:
            refusals.append(exc)
        finished += 1
        if finished == callers - 1:
            others_done.set()

    async with anyio.create_task_group() as group:
        for _ in range(callers):
            group.start_soon(call)
    print(
        f"{any_backend.name}: {callers} calls, {runs} run, {len(refusals)} refused as in progress"
    )
    assert runs == 1
    assert results == ["placed order-17"]
    assert len(refusals) == callers - 1
    assert all(exc.retry_after is not None and exc.retry_after > 0 for exc in refusals)
    assert await place("order-17") == "placed order-17"  # and later repeats replay
    assert runs == 1


class _CountingStore:
    """Pass every call through to ``inner``, counting the polls (``get`` calls)."""

    def __init__(self, inner: IdempotencyStore) -> None:
        self.inner = inner
        self.gets = 0

    def __repr__(self) -> str:
        return f"Counting({self.inner!r})"

    async def claim(self, key: str, fingerprint: str, *, token: str, lock_for: float) -> Any:
        return await self.inner.claim(key, fingerprint, token=token, lock_for=lock_for)

    async def complete(self, key: str, *, token: str, result: bytes, ttl: float) -> bool:
        return await self.inner.complete(key, token=token, result=result, ttl=ttl)

    async def release(self, key: str, *, token: str) -> bool:
        return await self.inner.release(key, token=token)

    async def get(self, key: str) -> Any:
        self.gets += 1
        return await self.inner.get(key)

    async def purge_expired(self) -> int:
        return await self.inner.purge_expired()


async def test_concurrent_duplicates_that_wait_all_get_the_result(any_backend: Backend) -> None:
    callers = 20
    store = _CountingStore(store_of(any_backend))
    clock = clock_of(any_backend)
    runs = 0
    release = anyio.Event()

    @idempotent(store, key="order_id", lock_for=3600.0, clock=clock)
    async def place(order_id: str) -> dict[str, int]:
        nonlocal runs
        runs += 1
        await release.wait()
        return {"order": 17, "run": runs}

    results: list[dict[str, int]] = []

    async def call() -> None:
        results.append(await place("order-17"))

    async with anyio.create_task_group() as group:
        for _ in range(callers):
            group.start_soon(call)
        while store.gets < callers - 1:  # every duplicate is polling
            await anyio.lowlevel.checkpoint()
        release.set()
    assert runs == 1
    assert results == [{"order": 17, "run": 1}] * callers


async def test_repeats_replay_and_conflicts_are_refused(any_backend: Backend) -> None:
    runs: list[int] = []

    @idempotent(store_of(any_backend), key="order_id", scope="tenant")
    async def charge(tenant: str, order_id: str, cents: int) -> dict[str, Any]:
        runs.append(cents)
        if cents < 0:
            raise ValueError("negative amount")
        return {"tenant": tenant, "charged": cents}

    assert await charge("acme", "o1", 500) == {"tenant": "acme", "charged": 500}
    assert await charge("acme", "o1", 500) == {"tenant": "acme", "charged": 500}
    assert await charge("globex", "o1", 700) == {"tenant": "globex", "charged": 700}
    with pytest.raises(IdempotencyConflictError):
        await charge("acme", "o1", 600)
    with pytest.raises(ValueError, match="negative"):
        await charge("acme", "o2", -1)
    with pytest.raises(ValueError, match="negative"):
        await charge("acme", "o2", -1)  # a failure is not stored: it runs again
    assert runs == [500, 700, -1, -1]


async def test_the_http_middleware_replays_from_every_backend(any_backend: Backend) -> None:
    from tests.test_idempotency_asgi import Orders, request  # noqa: PLC0415

    orders = Orders()
    app = IdempotencyMiddleware(orders, store_of(any_backend))
    body = b'{"sku": "' + b"t" * 100_000 + b'"}'
    first = await request(app, body=body)
    again = await request(app, body=body)
    conflict = await request(app, body=b"{}")
    assert first is not None
    assert again is not None
    assert conflict is not None
    assert (first.status, again.status, conflict.status) == (201, 201, 422)
    assert again.body == first.body
    assert again.header(b"idempotency-replayed") == b"true"
    assert len(orders.calls) == 1
