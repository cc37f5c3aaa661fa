"""The MemberRemoved race: a load that began before an invalidation never serves or stores.

Each test runs against the in-memory store and against `NearStore`, which suspends in
every async method like a store on the network (Redis with a local mirror) would, so
that invalidations interleave with reads and writes in progress.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilience_kit.caching import (
    CacheLoadError,
    CachePolicy,
    CacheRecord,
    FailClosed,
    FailOpen,
    MemoryCacheStore,
    PolicyCache,
    ServeStale,
)
from resilience_kit.testing import VirtualClock


class NearStore(MemoryCacheStore[Any, Any]):
    """A remote store with a local mirror: `peek` reads the mirror; the rest suspends.

    Every request waits ``latency`` steps on the way there and on the way back (the
    remote applies it in between); ``latency`` cycles through the given step counts.
    As the `CacheStore` contract requires, the mirror never takes a record from a load
    that began before a local invalidation of its key, even when that load completes
    on the remote before the invalidation reaches it.
    """

    def __init__(self, latency: Iterable[int] = (1,)) -> None:
        super().__init__()
        self.near: dict[Any, CacheRecord[Any]] = {}
        self._latency = itertools.cycle(latency)
        self._tokens = itertools.count()
        self._loads: dict[int, tuple[int, int, int]] = {}  # token -> remote epoch, marks
        self._local: dict[Any, int] = {}  # local invalidations per key
        self._local_all = 0

    async def _wait(self) -> None:
        for _ in range(next(self._latency)):
            await anyio.lowlevel.checkpoint()

    def peek(self, key: Any) -> CacheRecord[Any] | None:
        return self.near.get(key)

    async def fetch(self, key: Any, now: float) -> CacheRecord[Any] | None:
        await self._wait()
        record = await super().fetch(key, now)
        await self._wait()
        return record

    async def begin_load(self, key: Any) -> int:
        marks = (self._local.get(key, 0), self._local_all)
        await self._wait()
        epoch = await super().begin_load(key)
        await self._wait()
        token = next(self._tokens)
        self._loads[token] = (epoch, *marks)
        return token

    async def complete_load(self, key: Any, epoch: int, record: CacheRecord[Any] | None) -> bool:
        remote_epoch, local, local_all = self._loads.pop(epoch)
        await self._wait()
        stored = await super().complete_load(key, remote_epoch, record)
        mirror = (self._local.get(key, 0), self._local_all) == (local, local_all)
        if stored and mirror:
            if record is None:
                self.near.pop(key, None)
            else:
                self.near[key] = record
        await self._wait()
        return stored

    def abort_load(self, key: Any, epoch: int) -> None:
        remote_epoch, _, _ = self._loads.pop(epoch)
        super().abort_load(key, remote_epoch)

    async def invalidate(self, key: Any) -> None:
        self.near.pop(key, None)  # the mirror forgets at once, the remote later
        self._local[key] = self._local.get(key, 0) + 1
        await self._wait()
        await super().invalidate(key)
        await self._wait()

    async def invalidate_all(self) -> None:
        self.near.clear()
        self._local_all += 1
        await self._wait()
        await super().invalidate_all()
        await self._wait()


STORES = [MemoryCacheStore, NearStore]


@pytest.fixture(params=STORES, ids=["memory", "near"])
def store_type(request: pytest.FixtureRequest) -> type[MemoryCacheStore[Any, Any]]:
    return request.param  # type: ignore[no-any-return]


class Directory:
    """The membership service: reads the truth when a load starts, answers when released."""

    def __init__(self, *members: str) -> None:
        self.members = set(members)
        self.gates: list[anyio.Event] = []

    async def is_member(self, user: str) -> bool:
        snapshot = user in self.members  # the database read happens here
        gate = anyio.Event()
        self.gates.append(gate)
        await gate.wait()
        return snapshot


@pytest.mark.anyio
async def test_member_removed_while_its_membership_loads(
    store_type: type[MemoryCacheStore[Any, Any]],
) -> None:
    directory = Directory("ann")
    cache = PolicyCache(
        directory.is_member,
        ttl=900.0,
        policy=FailClosed(),
        store=store_type(),
        clock=VirtualClock(),
    )
    answers: list[bool] = []

    async def check() -> None:
        answers.append(await cache.get("ann"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(check)
        await settle()
        assert len(directory.gates) == 1  # the load read "member" and is still in flight
        directory.members.discard("ann")  # MemberRemoved...
        await cache.invalidate("ann")  # ...and the cache hears of it
        directory.gates[0].set()  # the stale load returns True
        await settle()
        assert cache.store.peek("ann") is None  # not stored
        assert len(directory.gates) == 2  # the waiting get loads again
        directory.gates[1].set()
    assert answers == [False]
    assert await cache.get("ann") is False  # and the fresh answer is cached
    assert len(directory.gates) == 2


@pytest.mark.anyio
async def test_a_get_after_the_invalidation_does_not_join_the_stale_load(
    store_type: type[MemoryCacheStore[Any, Any]],
) -> None:
    directory = Directory("ann")
    cache = PolicyCache(directory.is_member, ttl=900.0, store=store_type(), clock=VirtualClock())
    answers: list[tuple[str, bool]] = []

    async def check(label: str) -> None:
        answers.append((label, await cache.get("ann")))

    async with anyio.create_task_group() as tg:
        tg.start_soon(check, "before")
        await settle()
        directory.members.discard("ann")
        await cache.invalidate("ann")
        tg.start_soon(check, "after")
        await settle()
        assert len(directory.gates) == 2  # a new load, not the old one
        directory.gates[1].set()  # the new load finishes first
        await settle()
        assert answers == [("after", False)]
        directory.gates[0].set()  # then the stale one: not stored, not served
        await settle()
    assert sorted(answers) == [("after", False), ("before", False)]
    record = cache.store.peek("ann")
    assert record is not None
    assert record.value is False


# -- the property, over random interleavings ------------------------------------------------


@dataclass
class Load:
    user: str
    member: bool
    removals: int  # how many removals of ``user`` had happened when the load read
    gate: anyio.Event = field(default_factory=anyio.Event)
    fail: bool = False


@dataclass
class World:
    members: set[str]
    removals: dict[str, int]  # removals from the directory, per user
    announced: dict[str, int]  # removals whose invalidation has been called
    loads: list[Load] = field(default_factory=list)
    answers: list[tuple[str, Any, int]] = field(default_factory=list)
    denied: int = 0

    async def load(self, user: str) -> tuple[bool, int]:
        load = Load(user, user in self.members, self.removals[user])
        self.loads.append(load)
        await load.gate.wait()
        if load.fail:
            raise ConnectionError("membership service down")
        return load.member, load.removals

    def pending(self) -> list[Load]:
        return [load for load in self.loads if not load.gate.is_set()]


USERS = ("ann", "bob")

# After each action the script either lets every task run until blocked (-1) or lets
# them take only a few steps, so that actions land in the middle of gets and loads.
pace = st.integers(-1, 3)
actions = st.lists(
    st.tuples(
        st.one_of(
            st.tuples(st.just("get"), st.sampled_from(USERS)),
            st.tuples(st.just("release"), st.integers(0, 7)),
            st.tuples(st.just("fail"), st.integers(0, 7)),
            st.tuples(st.just("remove"), st.sampled_from(USERS)),
            st.tuples(st.just("add"), st.sampled_from(USERS)),
            st.tuples(st.just("advance"), st.sampled_from([1.0, 5.0, 20.0])),
            st.tuples(st.just("cancel"), st.integers(0, 7)),
            st.tuples(st.just("invalidate_all"), st.just("")),
        ),
        pace,
    ),
    max_size=40,
)

policies: list[CachePolicy[Any]] = [
    FailClosed(),
    FailOpen(),
    ServeStale(stale_while_revalidate=5.0, stale_if_error=30.0),
]


async def settle() -> None:
    """Let every task run until it blocks.

    A few checkpoints first: on asyncio, `wait_all_tasks_blocked` sleeps 0.1 s for real
    whenever it finds a task that can still run.
    """
    for _ in range(12):
        await anyio.lowlevel.checkpoint()
    await anyio.wait_all_tasks_blocked()


async def play(
    script: list[tuple[tuple[str, Any], int]],
    policy: CachePolicy[Any],
    background: bool,
    store: Any,
) -> World:
    world = World(
        members=set(USERS), removals=dict.fromkeys(USERS, 0), announced=dict.fromkeys(USERS, 0)
    )
    clock = VirtualClock()
    cache: PolicyCache[str, tuple[bool, int]] = PolicyCache(
        world.load, ttl=10.0, policy=policy, store=store, clock=clock, on=ConnectionError
    )
    scopes: list[anyio.CancelScope] = []

    async def get(user: str, scope: anyio.CancelScope) -> None:
        with scope:
            try:
                value = await cache.get(user)
            except CacheLoadError:
                world.denied += 1
                return
            # Checked the moment the get returns: once the invalidation for a removal
            # has been called, no get may answer "member" from a read before it.
            member, removals_seen = value
            if member:
                assert removals_seen >= world.announced[user], (user, value, world.announced)
            world.answers.append((user, member, removals_seen))

    async def member_removed(user: str) -> None:
        world.announced[user] = world.removals[user]
        await cache.invalidate(user)

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            for (action, arg), steps in script:
                if action == "get":
                    scope = anyio.CancelScope()
                    scopes.append(scope)
                    tg.start_soon(get, arg, scope)
                elif action in ("release", "fail"):
                    pending = world.pending()
                    if pending:
                        load = pending[arg % len(pending)]
                        load.fail = action == "fail"
                        load.gate.set()
                elif action == "remove":
                    world.members.discard(arg)  # the directory changes first...
                    world.removals[arg] += 1
                    tg.start_soon(member_removed, arg)  # ...then the event arrives
                elif action == "add":
                    world.members.add(arg)
                    tg.start_soon(cache.invalidate, arg)
                elif action == "advance":
                    clock.advance(arg)
                elif action == "cancel":
                    if scopes:
                        scopes[arg % len(scopes)].cancel()
                else:
                    tg.start_soon(cache.invalidate_all)
                if steps < 0:
                    await settle()
                for _ in range(steps):
                    await anyio.lowlevel.checkpoint()
            # Let everything finish: release every load, including the retries.
            await settle()
            while world.pending():
                for load in world.pending():
                    load.gate.set()
                await settle()

    if background:
        async with cache:
            await run()
    else:
        await run()
    assert cache._keys == {}
    assert cache.stats().loads_in_progress == 0
    return world


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    script=actions,
    policy=st.sampled_from(policies),
    background=st.booleans(),
    latency=st.none() | st.lists(st.integers(0, 2), min_size=1, max_size=6),
)
def test_no_get_ever_answers_member_from_a_load_before_the_removal(
    backend: str,
    script: list[tuple[tuple[str, Any], int]],
    policy: CachePolicy[Any],
    background: bool,
    latency: list[int] | None,
) -> None:
    async def main() -> None:
        store = MemoryCacheStore() if latency is None else NearStore(latency)
        await play(script, policy, background, store)

    anyio.run(main, backend=backend)


@pytest.mark.anyio
async def test_the_property_checker_catches_a_stale_answer() -> None:
    # A cache that ignored invalidations would be caught: the checker is not vacuous.
    world = World(members={"ann"}, removals={"ann": 0}, announced={"ann": 0})
    cache = PolicyCache(world.load, ttl=10.0, clock=VirtualClock())
    async with anyio.create_task_group() as tg:
        tg.start_soon(cache.get, "ann")
        await settle()
        world.loads[0].gate.set()
    world.members.discard("ann")
    world.removals["ann"] += 1
    world.announced["ann"] = 1  # removed and announced, but the cache never hears of it
    member, removals_seen = await cache.get("ann")
    assert member
    assert removals_seen < world.announced["ann"]


@pytest.mark.anyio
async def test_a_waiter_woken_by_a_finished_load_rechecks_after_an_invalidation(
    store_type: type[MemoryCacheStore[Any, Any]],
) -> None:
    # The load finishes and stores, and then - before a caller waiting on it resumes -
    # the member is removed: that caller must not return the value the event removed.
    world = World(members={"ann"}, removals={"ann": 0}, announced={"ann": 0})
    cache = PolicyCache(world.load, ttl=10.0, store=store_type(), clock=VirtualClock())
    answers: list[tuple[bool, int, int]] = []

    async def check(then_remove: bool) -> None:
        member, removals_seen = await cache.get("ann")
        answers.append((member, removals_seen, world.announced["ann"]))
        if then_remove:  # in the same step: the waiter has been woken but has not run
            world.members.discard("ann")
            world.removals["ann"] += 1
            world.announced["ann"] = world.removals["ann"]
            await cache.invalidate("ann")

    async with anyio.create_task_group() as tg:
        tg.start_soon(check, True)  # runs the load
        await settle()
        tg.start_soon(check, False)  # waits on it
        await settle()
        world.loads[0].gate.set()
        await settle()
        for load in world.pending():
            load.gate.set()
    assert answers == [(True, 0, 0), (False, 1, 1)]
    assert len(world.loads) == 2


class ScriptedStore(MemoryCacheStore[Any, Any]):
    """A remote store whose invalidations and read replies wait for the test's say-so."""

    def __init__(self) -> None:
        super().__init__()
        self.near: dict[Any, CacheRecord[Any]] = {}
        self.apply_invalidation = anyio.Event()
        self.reply: anyio.Event | None = None

    def peek(self, key: Any) -> CacheRecord[Any] | None:
        return self.near.get(key)

    async def fetch(self, key: Any, now: float) -> CacheRecord[Any] | None:
        record = await super().fetch(key, now)  # read on the remote...
        if self.reply is not None:
            await self.reply.wait()  # ...the answer arrives later
        return record

    async def complete_load(self, key: Any, epoch: int, record: CacheRecord[Any] | None) -> bool:
        stored = await super().complete_load(key, epoch, record)
        if stored and record is not None:
            self.near[key] = record
        return stored

    async def invalidate(self, key: Any) -> None:
        self.near.pop(key, None)
        await self.apply_invalidation.wait()
        await super().invalidate(key)


@pytest.mark.anyio
async def test_a_read_racing_the_store_invalidation_is_not_served() -> None:
    # A get that starts while the store is still invalidating reads the old record
    # (the remote has not applied the invalidation yet): it must not serve it, even if
    # the answer arrives before the invalidation completes.
    world = World(members={"ann"}, removals={"ann": 0}, announced={"ann": 0})
    store = ScriptedStore()
    cache = PolicyCache(world.load, ttl=10.0, store=store, clock=VirtualClock())
    answers: list[tuple[bool, int]] = []

    async def check() -> None:
        answers.append(await cache.get("ann"))

    async with anyio.create_task_group() as tg:
        try:
            tg.start_soon(check)
            await settle()
            world.loads[0].gate.set()
            await settle()
            assert answers == [(True, 0)]

            world.members.discard("ann")
            world.removals["ann"] += 1
            tg.start_soon(cache.invalidate, "ann")
            await settle()
            assert cache._keys["ann"].invalidating == 1
            store.reply = anyio.Event()
            tg.start_soon(check)
            await settle()  # it read the old record; the reply waits
            store.reply.set()  # the old record arrives while the invalidation is in progress
            await settle()
            assert answers == [(True, 0)]  # not served: the get waits for the invalidation
            store.apply_invalidation.set()
            await settle()
            for load in world.pending():
                load.gate.set()
        finally:  # the invalidation is shielded: never leave it waiting
            store.apply_invalidation.set()
    assert answers == [(True, 0), (False, 1)]
    assert cache._keys == {}


@pytest.mark.anyio
async def test_overlapping_invalidations_of_one_key_are_all_waited_for() -> None:
    world = World(members={"ann"}, removals={"ann": 0}, announced={"ann": 0})
    store = ScriptedStore()
    cache = PolicyCache(world.load, ttl=10.0, store=store, clock=VirtualClock())
    answers: list[tuple[bool, int]] = []

    async def check() -> None:
        answers.append(await cache.get("ann"))

    async with anyio.create_task_group() as tg:
        try:
            tg.start_soon(cache.invalidate, "ann")
            tg.start_soon(cache.invalidate, "ann")
            await settle()
            state = cache._keys["ann"]
            assert state.invalidating == 2
            calm = state.calm
            tg.start_soon(check)
            await settle()
            assert answers == []  # it read nothing it may serve; it waits
            assert calm is not None
            assert not calm.is_set()
        finally:
            store.apply_invalidation.set()
        await settle()
        for load in world.pending():
            load.gate.set()
    assert answers == [(True, 0)]
    assert cache.stats().invalidations == 2
    assert cache._keys == {}
