"""@idempotent: run once per key, replay repeats, refuse conflicts, wait for duplicates."""

from __future__ import annotations

import gc
import inspect
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pydantic import Base64Bytes, BaseModel, ConfigDict
from pydantic.dataclasses import dataclass as pydantic_dataclass
from typing_extensions import TypedDict

from resilience_kit import telemetry
from resilience_kit.errors import (
    ConfigurationError,
    CorruptRecordError,
    IdempotencyConflictError,
    IdempotencyError,
    IdempotencyInProgressError,
    IdempotencyKeyError,
    IdempotencyResultError,
)
from resilience_kit.messaging import IdempotencyStore, idempotent
from resilience_kit.messaging._guard import check_key, decide, scoped_key
from resilience_kit.messaging._records import IdempotencyRecord
from resilience_kit.stores.memory._idempotency import MemoryIdempotencyStore
from resilience_kit.testing import VirtualClock

pytestmark = pytest.mark.anyio

LOCK = 30.0


class Receipt(BaseModel):
    order_id: str
    cents: int
    at: datetime


class Declined(Exception):
    """A business failure worth storing."""


class CardDeclined(Declined):
    """A subclass of a stored failure type."""


class NeedsKeywords(Exception):
    def __init__(self, *, code: int) -> None:
        super().__init__(f"code {code}")


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start=100.0)


@pytest.fixture
def store(clock: VirtualClock) -> MemoryIdempotencyStore:
    return MemoryIdempotencyStore(clock)


class Charges:
    """A payment function and a record of the times it actually ran."""

    def __init__(self, store: IdempotencyStore, clock: VirtualClock, **options: Any) -> None:
        self.runs: list[tuple[str, int]] = []
        self.gate: anyio.Event | None = None
        self.error: BaseException | None = None
        options.setdefault("lock_for", LOCK)

        @idempotent(store, key="order_id", clock=clock, **options)
        async def charge(order_id: str, cents: int, note: str = "") -> Receipt:
            self.runs.append((order_id, cents))
            if self.gate is not None:
                await self.gate.wait()
            if self.error is not None:
                raise self.error
            return Receipt(
                order_id=order_id, cents=cents, at=datetime(2026, 1, 1, tzinfo=timezone.utc)
            )

        self.charge = charge


# -- the basic contract -----------------------------------------------------------------


async def test_first_call_runs_and_repeats_get_the_stored_result(
    store: MemoryIdempotencyStore, clock: VirtualClock
) -> None:
    charges = Charges(store, clock)
    first = await charges.charge("order-1", 500)
    second = await charges.charge("order-1", 500)
    third = await charges.charge(order_id="order-1", cents=500)
    assert charges.runs == [("order-1", 500)]
    assert first == second == third
    assert isinstance(second, Receipt)  # read back as the return annotation says
    assert second.at.tzinfo is not None


async def test_other_keys_run_independently(
    store: MemoryIdempotencyStore, clock: VirtualClock
) -> None:
    charges = Charges(store, clock)
    await charges.charge("order-1", 500)
    await charges.charge("order-2", 500)
    assert charges.runs == [("order-1", 500), ("order-2", 500)]


async def test_the_same_key_with_another_request_is_a_conflict(
    store: MemoryIdempotencyStore, clock: VirtualClock
) -> None:
    charges = Charges(store, clock)
    await charges.charge("order-1", 500)
    with pytest.raises(IdempotencyConflictError) as caught:
        await charges.charge("order-1", 700)
    assert caught.value.key.endswith(":order-1")
    with pytest.raises(IdempotencyConflictError):
        await charges.charge("order-1", 500, note="x")  # any argument counts
    assert charges.runs == [("order-1", 500)]


async def test_defaults_and_keyword_spelling_do_not_change_the_fingerprint(
    store: MemoryIdempotencyStore, clock: VirtualClock
) -> None:
    charges = Charges(store, clock)
    await charges.charge("order-1", 500)
    await charges.charge("order-1", cents=500, note="")
    assert len(charges.runs) == 1


async def test_results_expire_after_ttl(store: MemoryIdempotencyStore, clock: VirtualClock) -> None:
    charges = Charges(store, clock, ttl=60.0)
    await charges.charge("order-1", 500)
    clock.advance(59.0)
    await charges.charge("order-1", 500)
    assert len(charges.runs) == 1
    clock.advance(1.0)
    await charges.charge("order-1", 700)  # the key is free again: no conflict
    assert charges.runs == [("order-1", 500), ("order-1", 700)]


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        ("None", None),
        ("int", 2**70),
        ("float", 0.1),
        ("tuple[int, str]", (1, "a")),
        ("dict[str, list[int]]", {"a": [1, 2]}),
        ("uuid.UUID", uuid.UUID(int=7)),
        ("bytes", b"\x00\xff"),
        ("frozenset[int]", frozenset({1, 2})),
        ("Any", {"plain": ["json", 1, None]}),
    ],
)
async def test_results_round_trip_as_their_annotation(
    store: MemoryIdempotencyStore, annotation: str, value: object
) -> None:
    namespace: dict[str, Any] = {"uuid": uuid, "Any": Any}
    exec(  # build a function with the annotation under test
        f"async def produce(key: str) -> {annotation}:\n    calls.append(key)\n    return value",
        namespace,
    )
    namespace.update(calls=[], value=value)
    produce = idempotent(store, key="key", name=f"round-trip-{annotation}")(namespace["produce"])
    assert await produce("k") == value
    replayed = await produce("k")
    assert replayed == value
    assert type(replayed) is type(value)
    assert namespace["calls"] == ["k"]


# -- keys and scopes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "the key must not be empty"),
        ("k" * 256, "the key must be at most 255 characters, got 256"),
        ("a\nb", "the key must not contain control characters"),
        ("a\x00b", "the key must not contain control characters"),
        (None, "the key is missing"),
        (["k"], "the key must be a str, got list"),
        (True, "the key must be a str, got bool"),
    ],
)
async def test_invalid_keys_are_refused_before_anything_runs(
    store: MemoryIdempotencyStore, clock: VirtualClock, bad: object, message: str
) -> None:
    charges = Charges(store, clock)
    with pytest.raises(IdempotencyKeyError, match=message) as caught:
        await charges.charge(bad, 500)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    assert charges.runs == []
    assert store._entries == {}


def test_ints_and_uuids_are_keys_too() -> None:
    assert check_key(17) == "17"
    assert check_key(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert check_key("k" * 255) == "k" * 255
    assert check_key("ключ 🔑") == "ключ 🔑"


def test_scoped_keys_never_collide() -> None:
    triples = [
        ("f", None, "a:b"),
        ("f", "a", "b"),
        ("f", "a:b", "c"),
        ("f", "a", "b:c"),
        ("f:a", None, "b"),
        ("f", "a%3Ab", "c"),
        ("f", "", "a"),
    ]
    keys = [scoped_key(*triple) for triple in triples[:-1]]
    assert len(set(keys)) == len(keys)
    assert scoped_key("f", None, "a") == scoped_key(*triples[-1])  # "" is no scope


async def test_a_key_function_and_a_scope_keep_tenants_apart(
    store: MemoryIdempotencyStore,
) -> None:
    runs: list[str] = []

    @idempotent(store, key=lambda tenant, request: request["id"], scope="tenant")
    async def create(tenant: str, request: dict[str, str]) -> str:
        runs.append(tenant)
        return f"{tenant}-{request['id']}"

    assert await create("acme", {"id": "r1"}) == "acme-r1"
    assert await create("globex", {"id": "r1"}) == "globex-r1"  # same key, another tenant
    assert await create("acme", {"id": "r1"}) == "acme-r1"
    assert runs == ["acme", "globex"]
    with pytest.raises(IdempotencyKeyError, match="the scope must not be empty"):
        await create("", {"id": "r1"})


async def test_two_functions_sharing_a_store_and_keys_do_not_meet(
    store: MemoryIdempotencyStore,
) -> None:
    @idempotent(store, key="order_id")
    async def charge(order_id: str) -> str:
        return "charged"

    @idempotent(store, key="order_id")
    async def ship(order_id: str) -> str:
        return "shipped"

    assert await charge("o1") == "charged"
    assert await ship("o1") == "shipped"  # not charge's result, not a conflict


async def test_name_pins_the_namespace(store: MemoryIdempotencyStore) -> None:
    @idempotent(store, key="order_id", name="billing.charge")
    async def charge(order_id: str) -> str:
        return "v1"

    @idempotent(store, key="order_id", name="billing.charge")
    async def charge_renamed(order_id: str) -> str:
        return "v2"

    assert await charge("o1") == "v1"
    assert await charge_renamed("o1") == "v1"  # the same namespace: replayed
    assert "billing.charge::o1" in store._entries


# -- fingerprints ---------------------------------------------------------------------


async def test_sets_fingerprint_the_same_in_any_order(store: MemoryIdempotencyStore) -> None:
    runs: list[object] = []

    @idempotent(store, key="key")
    async def tag(key: str, tags: set[str], extra: dict[Any, Any]) -> None:
        runs.append(tags)

    await tag("k", {"b", "a", "c"}, {1: {"x", "y"}, 2: None})
    await tag("k", {"c", "a", "b"}, {2: None, 1: {"y", "x"}})
    assert len(runs) == 1


async def test_arguments_json_cannot_express_need_a_fingerprint(
    store: MemoryIdempotencyStore,
) -> None:
    class Connection:
        pass

    runs: list[str] = []

    @idempotent(store, key="key")
    async def insert(key: str, connection: Connection) -> None:
        runs.append(key)

    with pytest.raises(TypeError, match=r"cannot fingerprint argument 'connection'.*fingerprint="):
        await insert("k", Connection())
    assert runs == []

    @idempotent(store, key="key", fingerprint=lambda key, connection: key, name="with-fp")
    async def insert_fp(key: str, connection: Connection) -> None:
        runs.append(key)

    await insert_fp("k", Connection())
    await insert_fp("k", Connection())  # another connection, the same request
    assert runs == ["k"]


async def test_a_fingerprint_must_be_a_str(store: MemoryIdempotencyStore) -> None:
    @idempotent(store, key="key", fingerprint=lambda key: 42)  # type: ignore[arg-type,return-value]
    async def work(key: str) -> None:
        pass

    with pytest.raises(TypeError, match="fingerprint= must return a str"):
        await work("k")


async def test_methods_leave_self_out_of_the_fingerprint(store: MemoryIdempotencyStore) -> None:
    class Service:
        def __init__(self) -> None:
            self.runs = 0

        @idempotent(store, key="order_id")
        async def charge(self, order_id: str) -> int:
            self.runs += 1
            return self.runs

    first, second = Service(), Service()
    assert await first.charge("o1") == 1
    assert await second.charge("o1") == 1  # another instance, the same request: replayed
    assert (first.runs, second.runs) == (1, 0)


# -- running duplicates ---------------------------------------------------------------


async def test_concurrent_duplicates_wait_for_the_result() -> None:
    clock = VirtualClock(start=0.0, auto_advance=False)
    store = MemoryIdempotencyStore(clock)
    charges = Charges(store, clock)
    charges.gate = anyio.Event()
    results: list[Receipt] = []

    async def call() -> None:
        results.append(await charges.charge("order-1", 500))

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        assert len(charges.runs) == 1  # one runs, four poll
        assert len(clock.sleeps) == 4
        charges.gate.set()
        for _ in range(4):
            clock.advance(1.0)
            await anyio.wait_all_tasks_blocked()
    assert len(results) == 5
    assert len({result.model_dump_json() for result in results}) == 1
    assert charges.runs == [("order-1", 500)]
    assert max(clock.sleeps) <= 1.0  # polls back off up to a second


async def test_on_in_progress_raise_refuses_a_running_duplicate_with_retry_after(
    store: MemoryIdempotencyStore, clock: VirtualClock
) -> None:
    charges = Charges(store, clock, on_in_progress="raise")
    charges.gate = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(charges.charge, "order-1", 500)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(IdempotencyInProgressError) as caught:
            await charges.charge("order-1", 500)
        with pytest.raises(IdempotencyConflictError):  # another request: a conflict at once
            await charges.charge("order-1", 999)
        charges.gate.set()
    assert caught.value.retry_after == pytest.approx(LOCK)
    assert len(charges.runs) == 1


async def test_a_wait_gives_up_after_wait_timeout() -> None:
    clock = VirtualClock(start=0.0)  # sleeps return at once, moving time
    store = MemoryIdempotencyStore(clock)
    charges = Charges(store, clock, wait_timeout=5.0)
    charges.gate = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(charges.charge, "order-1", 500)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(IdempotencyInProgressError) as caught:
            await charges.charge("order-1", 500)
        assert clock.monotonic() == pytest.approx(5.0)
        assert sum(clock.sleeps) == pytest.approx(5.0)
        assert caught.value.retry_after == pytest.approx(LOCK - 5.0)
        charges.gate.set()


async def test_a_crashed_claim_expires_after_lock_for(
    store: MemoryIdempotencyStore, clock: VirtualClock
) -> None:
    charges = Charges(store, clock, on_in_progress="raise")
    await charges.charge("order-0", 1)  # learn the stored key and fingerprint
    [(stored_key, entry)] = store._entries.items()
    crashed_key = stored_key.replace("order-0", "order-1")
    fingerprint = entry.fingerprint  # not the right one for order-1: matters not once expired
    await store.claim(crashed_key, fingerprint, token="crashed", lock_for=LOCK)
    with pytest.raises(IdempotencyConflictError):
        await charges.charge("order-1", 500)
    clock.advance(LOCK)
    assert await charges.charge("order-1", 500)
    assert charges.runs == [("order-0", 1), ("order-1", 500)]


async def test_a_waiting_duplicate_runs_when_the_first_call_fails() -> None:
    clock = VirtualClock(start=0.0, auto_advance=False)
    store = MemoryIdempotencyStore(clock)
    charges = Charges(store, clock)
    charges.gate = anyio.Event()
    charges.error = ValueError("card service down")
    outcomes: list[object] = []

    async def call() -> None:
        try:
            outcomes.append(await charges.charge("order-1", 500))
        except ValueError as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as group:
        group.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        assert len(clock.sleeps) == 1  # the second call polls
        charges.gate.set()
        await anyio.wait_all_tasks_blocked()
        assert len(outcomes) == 1  # the first call failed and released the key
        charges.gate = None
        charges.error = None
        clock.advance(1.0)
    assert len(charges.runs) == 2
    assert isinstance(outcomes[0], ValueError)
    assert isinstance(outcomes[1], Receipt)


# -- failures -------------------------------------------------------------------------


async def test_failures_release_the_key_so_a_retry_runs(
    store: MemoryIdempotencyStore, clock: VirtualClock
) -> None:
    charges = Charges(store, clock)
    charges.error = ConnectionError("card service down")
    with pytest.raises(ConnectionError):
        await charges.charge("order-1", 500)
    assert store._entries == {}
    charges.error = None
    await charges.charge("order-1", 500)
    assert len(charges.runs) == 2


async def test_store_failures_are_stored_and_raised_again(
    store: MemoryIdempotencyStore, clock: VirtualClock
) -> None:
    charges = Charges(store, clock, store_failures=(Declined,))
    charges.error = CardDeclined("insufficient funds", 51)
    with pytest.raises(CardDeclined) as first:
        await charges.charge("order-1", 500)
    charges.error = None
    with pytest.raises(CardDeclined) as again:  # the subclass, re-created from its args
        await charges.charge("order-1", 500)
    assert again.value is not first.value
    assert again.value.args == ("insufficient funds", 51)
    assert len(charges.runs) == 1
    charges.error = ConnectionError("not a stored failure")
    with pytest.raises(ConnectionError):
        await charges.charge("order-2", 500)
    assert len(store._entries) == 1


async def test_a_stored_failure_that_cannot_be_recreated_raises_idempotency_error(
    store: MemoryIdempotencyStore, clock: VirtualClock
) -> None:
    charges = Charges(store, clock, store_failures=(NeedsKeywords,))
    charges.error = NeedsKeywords(code=7)
    with pytest.raises(NeedsKeywords):
        await charges.charge("order-1", 500)
    with pytest.raises(IdempotencyError, match=r"failed before with .*NeedsKeywords: code 7"):
        await charges.charge("order-1", 500)
    assert len(charges.runs) == 1


async def test_cancellation_releases_the_claim_and_is_never_stored(
    store: MemoryIdempotencyStore, clock: VirtualClock
) -> None:
    charges = Charges(store, clock, store_failures=(Exception,))
    charges.gate = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(charges.charge, "order-1", 500)
        await anyio.wait_all_tasks_blocked()
        assert len(store._entries) == 1
        group.cancel_scope.cancel()
    assert store._entries == {}
    charges.gate = None
    assert await charges.charge("order-1", 500)
    assert len(charges.runs) == 2


async def test_a_result_that_cannot_be_stored_is_an_outcome_and_never_runs_again(
    store: MemoryIdempotencyStore,
) -> None:
    calls: list[str] = []

    @idempotent(store, key="key", name="wrong")
    async def wrong(key: str) -> int:
        calls.append(key)
        return "not an int"  # type: ignore[return-value]

    with pytest.raises(IdempotencyResultError, match="cannot be stored") as first:
        await wrong("k")
    with pytest.raises(IdempotencyResultError, match="cannot be stored") as repeat:
        await wrong("k")
    assert calls == ["k"]
    assert first.value.key == repeat.value.key == "wrong::k"
    assert store._entries["wrong::k"].status == "completed"


class Reading(BaseModel):
    value: float


async def test_a_result_that_does_not_read_back_is_never_run_again(
    store: MemoryIdempotencyStore,
) -> None:
    calls: list[str] = []

    @idempotent(store, key="key")
    async def measure(key: str) -> Reading:
        calls.append(key)
        return Reading(value=float("nan"))  # the model writes NaN as null

    for _ in range(2):
        with pytest.raises(IdempotencyResultError, match="Reading"):
            await measure("k")
    assert calls == ["k"]


class Blob(BaseModel):
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")
    data: bytes


class Attachment(BaseModel):
    name: str
    content: Base64Bytes
    parts: list[Blob] = []


@dataclass
class Frame:
    payload: bytes


class Packet(TypedDict):
    payload: bytes


@pytest.mark.parametrize(
    "value",
    [
        b"\xff\x00\xfe",
        Blob(data=b"\xff\x80"),
        Attachment(name="a", content=b"\xff\x81", parts=[Blob(data=b"\x82")]),
        Frame(b"\xff\x83"),
        [Frame(b"\x84")],
        {"p": b"\xff"},
        float("inf"),
    ],
    ids=repr,
)
async def test_non_utf8_bytes_round_trip_in_models_and_dataclasses(
    store: MemoryIdempotencyStore, value: object
) -> None:
    calls: list[object] = []
    kind: Any = type(value) if not isinstance(value, (list, dict)) else Any
    if isinstance(value, list):
        kind = list[Frame]
    elif isinstance(value, dict):
        kind = dict[str, bytes]

    async def produce(key: str) -> Any:
        calls.append(key)
        return value

    produce.__annotations__["return"] = kind
    guarded = idempotent(store, key="key", name=f"bytes-{len(calls)}-{id(value)}")(produce)
    assert await guarded("k") == value
    replayed = await guarded("k")
    assert replayed == value
    assert type(replayed) is type(value)
    assert calls == ["k"]


async def test_a_typed_dict_with_bytes_round_trips(store: MemoryIdempotencyStore) -> None:
    @idempotent(store, key="key")
    async def receive(key: str) -> Packet:
        return {"payload": b"\xff\x85"}

    assert await receive("k") == await receive("k") == {"payload": b"\xff\x85"}


class Upload(BaseModel):
    data: bytes  # written as UTF-8 text by the model's own configuration


class Envelope(BaseModel):
    uploads: list[Upload]


async def _upload(key: str) -> Upload:
    return Upload(data=b"\xff")


async def _envelope(key: str) -> Envelope:
    return Envelope(uploads=[])


@pydantic_dataclass
class Scan:
    image: bytes  # a pydantic dataclass keeps its own configuration too


async def _scan(key: str) -> Scan:
    return Scan(image=b"\xff")


class Tree(BaseModel):
    children: list[Tree] = []
    blob: bytes = b""


async def _tree(key: str) -> Tree:
    return Tree()


async def _maybe(key: str) -> dict[str, Upload] | None:
    return None


async def _callable(key: str) -> Callable[[], int]:
    return lambda: 1


async def _class(key: str) -> type[int]:
    return int


@pytest.mark.parametrize(
    ("function", "problem"),
    [
        (_upload, "the bytes field Upload.data is written as utf8 text"),
        (_envelope, "the bytes field Upload.data is written as utf8 text"),
        (_scan, "the bytes field Scan.image is written as utf8 text"),
        (_tree, "the bytes field Tree.blob is written as utf8 text"),
        (_maybe, "the bytes field Upload.data is written as utf8 text"),
        (_callable, "is a callable, which has no JSON form"),
        (_class, "is a class, which has no JSON form"),
    ],
)
def test_return_types_that_cannot_be_stored_are_refused_at_decoration(
    store: MemoryIdempotencyStore, function: Any, problem: str
) -> None:
    with pytest.raises(ConfigurationError, match=problem) as caught:
        idempotent(store, key="key")(function)
    assert caught.value.parameter == "function"


class _FlakyStore:
    """A store whose complete or release fails, as a store whose database went away."""

    def __init__(self, inner: MemoryIdempotencyStore, failing: str) -> None:
        self.inner = inner
        self.failing = failing

    def __repr__(self) -> str:
        return "FlakyStore"

    async def claim(self, key: str, fingerprint: str, *, token: str, lock_for: float) -> Any:
        return await self.inner.claim(key, fingerprint, token=token, lock_for=lock_for)

    async def complete(self, key: str, *, token: str, result: bytes, ttl: float) -> bool:
        if self.failing == "complete":
            raise ConnectionError("store down")
        return await self.inner.complete(key, token=token, result=result, ttl=ttl)

    async def release(self, key: str, *, token: str) -> bool:
        if self.failing == "release":
            raise ConnectionError("store down")
        return await self.inner.release(key, token=token)

    async def get(self, key: str) -> Any:
        return await self.inner.get(key)

    async def purge_expired(self) -> int:
        return await self.inner.purge_expired()


async def test_a_store_failure_after_the_call_still_returns_its_result(
    store: MemoryIdempotencyStore, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    charges = Charges(_FlakyStore(store, "complete"), clock)
    with caplog.at_level(logging.ERROR, logger="resilience_kit.idempotency"):
        receipt = await charges.charge("order-1", 500)
    assert receipt.cents == 500
    assert "could not store the outcome" in caplog.text


async def test_a_failing_release_keeps_the_call_s_own_exception(
    store: MemoryIdempotencyStore, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    charges = Charges(_FlakyStore(store, "release"), clock)
    charges.error = KeyError("the call's own error")
    with caplog.at_level(logging.ERROR, logger="resilience_kit.idempotency"):
        with pytest.raises(KeyError):
            await charges.charge("order-1", 500)
    assert "could not release" in caplog.text


async def test_a_lost_claim_is_logged_and_the_result_returned(
    store: MemoryIdempotencyStore, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    @idempotent(store, key="key", lock_for=10.0, name="slow")
    async def slow(key: str) -> str:
        clock.advance(11.0)  # ran past lock_for: the claim expired...
        await store.claim("slow::k", "other", token="t", lock_for=60.0)  # ...and was taken
        return "done"

    with caplog.at_level(logging.WARNING, logger="resilience_kit.idempotency"):
        assert await slow("k") == "done"
    assert "expired before the call finished" in caplog.text
    assert store._entries["slow::k"].token == "t"  # the other call's claim stands


async def test_a_corrupted_result_is_a_corrupt_record_error(
    store: MemoryIdempotencyStore,
) -> None:
    @idempotent(store, key="key", name="corrupt")
    async def work(key: str) -> int:
        return 1

    await work("k")
    store._entries["corrupt::k"].result = b'R"not an int"'
    with pytest.raises(CorruptRecordError, match="does not read back"):
        await work("k")
    store._entries["corrupt::k"].result = b"X1"
    with pytest.raises(CorruptRecordError, match="not an outcome of @idempotent"):
        await work("k")
    store._entries["corrupt::k"].result = b"E{"
    with pytest.raises(CorruptRecordError, match="unreadable stored failure"):
        await work("k")


# -- decoration ---------------------------------------------------------------------


async def test_the_wrapper_keeps_the_signature_and_coroutine_ness(
    store: MemoryIdempotencyStore, clock: VirtualClock
) -> None:
    charges = Charges(store, clock)
    wrapped = charges.charge.__wrapped__  # type: ignore[attr-defined]
    assert inspect.iscoroutinefunction(charges.charge)
    assert inspect.signature(charges.charge) == inspect.signature(wrapped)
    assert charges.charge.__name__ == "charge"


async def test_a_forward_reference_is_resolved_on_the_first_call(
    store: MemoryIdempotencyStore,
) -> None:
    @idempotent(store, key="key")
    async def make(key: str) -> LaterDefined:
        return LaterDefined(value=key)

    assert await make("k") == LaterDefined(value="k")
    assert await make("k") == LaterDefined(value="k")

    @idempotent(store, key="key")
    async def broken(key: str) -> NeverDefined:  # type: ignore[name-defined]  # noqa: F821
        return None

    with pytest.raises(ConfigurationError, match="cannot resolve the return annotation"):
        await broken("k")


@dataclass
class LaterDefined:
    value: str


def _sync(order_id: str) -> str:
    return order_id


async def _no_annotation(order_id):  # type: ignore[no-untyped-def]
    return order_id


async def _unserialisable(order_id: str) -> anyio.Event:
    return anyio.Event()


async def _varargs(*args: str, **kwargs: str) -> None:
    pass


async def _ok(order_id: str) -> None:
    pass


@pytest.mark.parametrize(
    ("options", "function", "parameter"),
    [
        ({}, _sync, "function"),
        ({}, _no_annotation, "function"),
        ({}, _unserialisable, "function"),
        ({"key": "missing"}, _ok, "key"),
        ({"key": "args"}, _varargs, "key"),
        ({"key": 17}, _ok, "key"),
        ({"scope": "tenant"}, _ok, "scope"),
        ({"ttl": 0}, _ok, "ttl"),
        ({"ttl": float("inf")}, _ok, "ttl"),
        ({"lock_for": -1.0}, _ok, "lock_for"),
        ({"wait_timeout": -1.0}, _ok, "wait_timeout"),
        ({"on_in_progress": "block"}, _ok, "on_in_progress"),
        ({"store_failures": (KeyboardInterrupt,)}, _ok, "store_failures"),
        ({"store_failures": ("ValueError",)}, _ok, "store_failures"),
        ({"store_failures": [ValueError]}, _ok, "store_failures"),
        ({"fingerprint": "args"}, _ok, "fingerprint"),
        ({"name": ""}, _ok, "name"),
        ({"clock": "system"}, _ok, "clock"),
    ],
)
def test_bad_configuration_is_refused_at_decoration(
    store: MemoryIdempotencyStore, options: dict[str, Any], function: Any, parameter: str
) -> None:
    options.setdefault("key", "order_id")
    with pytest.raises(ConfigurationError) as caught:
        idempotent(store, **options)(function)
    assert caught.value.parameter == parameter


def test_a_store_must_be_an_idempotency_store() -> None:
    with pytest.raises(ConfigurationError) as caught:
        idempotent(object(), key="order_id")  # type: ignore[arg-type]
    assert caught.value.parameter == "store"


async def test_a_single_exception_type_is_accepted_for_store_failures(
    store: MemoryIdempotencyStore, clock: VirtualClock
) -> None:
    charges = Charges(store, clock, store_failures=Declined)  # not in a tuple
    charges.error = CardDeclined("insufficient funds", 51)
    with pytest.raises(CardDeclined):
        await charges.charge("order-1", 500)
    charges.error = None
    with pytest.raises(CardDeclined):  # stored, raised again without running
        await charges.charge("order-1", 500)
    assert len(charges.runs) == 1


def test_decide_covers_every_record() -> None:
    def record(status: str, token: str = "t1", fingerprint: str = "f") -> IdempotencyRecord:
        return IdempotencyRecord(
            key="k",
            fingerprint=fingerprint,
            status=status,  # type: ignore[arg-type]
            token=token,
            result=None if status == "in_progress" else b"R1",
            expires_in=1.0,
        )

    assert decide(None, token="t1", fingerprint="f") == "absent"
    assert decide(record("in_progress"), token="t1", fingerprint="f") == "run"
    assert decide(record("in_progress"), token="t2", fingerprint="f") == "busy"
    assert decide(record("in_progress"), token="t2", fingerprint="g") == "conflict"
    assert decide(record("completed"), token="t2", fingerprint="f") == "replay"
    assert decide(record("completed"), token="t1", fingerprint="f") == "replay"
    assert decide(record("completed"), token="t2", fingerprint="g") == "conflict"


# -- telemetry -------------------------------------------------------------------------


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    gc.collect()  # guards of earlier tests must not report here
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry.configure(meter_provider=provider)
    try:
        yield reader
    finally:
        telemetry.configure()
        provider.shutdown()


async def test_outcomes_are_counted(
    store: MemoryIdempotencyStore, clock: VirtualClock, reader: InMemoryMetricReader
) -> None:
    charges = Charges(store, clock, name="billing.charge")
    await charges.charge("order-1", 500)
    await charges.charge("order-1", 500)
    await charges.charge("order-1", 500)
    with pytest.raises(IdempotencyConflictError):
        await charges.charge("order-1", 1)
    charges.error = ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        await charges.charge("order-2", 1)
    data = reader.get_metrics_data()
    assert data is not None
    counts = {
        dict(point.attributes or {})["outcome"]: point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "resilience.idempotency.calls"
        for point in metric.data.data_points  # type: ignore[union-attr]
        if dict(point.attributes or {})["idempotent"] == "billing.charge"
    }
    assert counts == {
        "executed": 1,
        "replayed": 2,
        "conflict": 1,
        "in_progress": 0,
        "failed": 1,
        "lease_lost": 0,
    }
