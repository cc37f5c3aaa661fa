"""Projection: a read model folded from events, validated, rebuilt beside the active version."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilience_kit import ConfigurationError
from resilience_kit.messaging import (
    Event,
    Projection,
    ProjectionStore,
    RebuildReport,
    ValidationReport,
)
from resilience_kit.stores.memory import MemoryProjectionStore
from resilience_kit.stores.sqlite import SQLiteStore
from resilience_kit.testing import VirtualClock

pytestmark = pytest.mark.anyio

# -- a model with an order-sensitive fold: members come and go, counters add up ----------


def keys(event: Event) -> list[str]:
    return [event.key, "totals"]


def apply(event: Event, rows: Mapping[str, Any]) -> dict[str, Any]:
    org = dict(rows.get(event.key, {"members": [], "resources": 0}))
    totals = dict(rows.get("totals", {"events": 0, "resources": 0}))
    members = set(org["members"])
    if event.type == "member_added":
        members.add(event.payload["user"])
    elif event.type == "member_removed":
        members.discard(event.payload["user"])
    elif event.type == "resource_created":
        org["resources"] += 1
        totals["resources"] += 1
    org["members"] = sorted(members)
    totals["events"] += 1
    return {event.key: org, "totals": totals}


def totals_match(rows: Mapping[str, Any]) -> list[str]:
    orgs = [value for key, value in rows.items() if key != "totals"]
    counted = sum(org["resources"] for org in orgs)
    total = rows.get("totals", {}).get("resources", 0)
    return [] if counted == total else [f"totals say {total} resources, orgs {counted}"]


def independent_fold(events: Iterable[Event]) -> dict[str, Any]:
    """The model written out by hand, without the projection's functions."""
    members: dict[str, set[str]] = {}
    resources: dict[str, int] = {}
    count = 0
    for event in events:
        count += 1
        members.setdefault(event.key, set())
        resources.setdefault(event.key, 0)
        if event.type == "member_added":
            members[event.key].add(event.payload["user"])
        elif event.type == "member_removed":
            members[event.key].discard(event.payload["user"])
        else:
            resources[event.key] += 1
    model: dict[str, Any] = {
        key: {"members": sorted(members[key]), "resources": resources[key]} for key in members
    }
    if count:
        model["totals"] = {"events": count, "resources": sum(resources.values())}
    return model


def event(kind: str, org: int, user: int = 0) -> Event:
    payload = {"user": f"u{user}"} if kind != "resource_created" else {}
    return Event(type=kind, key=f"org:{org}", payload=payload)


def some_events(count: int, seed: int = 0) -> list[Event]:
    rand = random.Random(seed)
    kinds = ("member_added", "member_added", "member_removed", "resource_created")
    return [event(rand.choice(kinds), rand.randrange(4), rand.randrange(3)) for _ in range(count)]


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterable[ProjectionStore]:
    if request.param == "memory":
        yield MemoryProjectionStore()
        return
    sqlite_store = SQLiteStore(tmp_path / "projections.db")
    sqlite_store.migrate()
    yield sqlite_store.projections
    sqlite_store.close()


def projection(store: ProjectionStore, clock: VirtualClock | None = None) -> Projection:
    return Projection(
        "orgs", store=store, keys=keys, apply=apply, invariants=[totals_match], clock=clock
    )


async def corrupt(store: ProjectionStore, version: int, key: str, value: Any) -> None:
    """A write behind the fold's back: what a bug or a bad migration does."""
    await store.apply("orgs", version, f"corruption-{key}", [key], lambda rows: {key: value})


# -- live events and reads ----------------------------------------------------------------


async def test_live_events_build_the_model_the_events_make(store: ProjectionStore) -> None:
    orgs = projection(store)
    events = some_events(30)
    for item in events:
        assert await orgs.handle(item) is True
    assert orgs.version == 1
    assert await orgs.rows() == independent_fold(events)
    assert await orgs.get("org:99", "absent") == "absent"


async def test_the_first_events_arriving_together_create_one_version(
    store: ProjectionStore,
) -> None:
    orgs = projection(store)
    events = [event("resource_created", number % 4) for number in range(8)]  # any order
    async with anyio.create_task_group() as group:
        for item in events:
            group.start_soon(orgs.handle, item)
    assert await store.versions("orgs") == [1]
    assert await orgs.rows() == independent_fold(events)


async def test_an_event_is_applied_once_per_version(store: ProjectionStore) -> None:
    orgs = projection(store)
    added = event("resource_created", 1)
    assert await orgs.handle(added) is True
    assert await orgs.handle(added) is False
    assert (await orgs.get("org:1"))["resources"] == 1


async def test_a_fold_that_changes_rows_it_did_not_name_changes_nothing(
    store: ProjectionStore,
) -> None:
    orgs = Projection(
        "orgs", store=store, keys=lambda e: [e.key], apply=lambda e, rows: {"elsewhere": 1}
    )
    with pytest.raises(ValueError, match="elsewhere"):
        await orgs.handle(event("resource_created", 1))
    assert await orgs.rows() == {}


async def test_a_new_object_finds_the_active_version_in_the_store(store: ProjectionStore) -> None:
    events = some_events(5)
    first = projection(store)
    for item in events:
        await first.handle(item)
    await first.rebuild(events)
    second = projection(store)
    assert await second.rows() == independent_fold(events)
    assert second.version == 2


# -- validation ---------------------------------------------------------------------------


async def test_validation_passes_a_model_that_matches_its_events(store: ProjectionStore) -> None:
    orgs = projection(store)
    events = some_events(20)
    for item in events:
        await orgs.handle(item)
    report = await orgs.validate(events=events)
    assert report.ok
    assert report.compared == report.rows == len(independent_fold(events))


async def test_validation_finds_a_broken_invariant(store: ProjectionStore) -> None:
    orgs = projection(store)
    for item in some_events(20):
        await orgs.handle(item)
    await corrupt(store, 1, "totals", {"events": 20, "resources": 999})
    report = await orgs.validate()
    assert not report.ok
    assert "999" in report.problems[0]
    assert report.compared == 0


async def test_validation_finds_a_row_that_differs_from_the_events(store: ProjectionStore) -> None:
    orgs = projection(store)
    events = [event("member_added", 1, 1), event("member_added", 2, 2)]
    for item in events:
        await orgs.handle(item)
    await corrupt(store, 1, "org:2", {"members": ["mallory"], "resources": 0})
    report = await orgs.validate(events=events)
    assert [problem.split(" is ")[0] for problem in report.problems] == ["row 'org:2'"]


async def test_validation_compares_a_sample_when_asked(store: ProjectionStore) -> None:
    orgs = projection(store)
    events = some_events(40)
    for item in events:
        await orgs.handle(item)
    report = await orgs.validate(events=events, sample=2, rand=random.Random(1))
    assert report.ok
    assert report.compared == 2


async def test_validation_ignores_events_the_version_has_not_applied_yet(
    store: ProjectionStore,
) -> None:
    orgs = projection(store)
    events = some_events(10)
    for item in events:
        await orgs.handle(item)
    arriving = event("member_added", 7, 1)  # in the log, not yet handled
    assert (await orgs.validate(events=[*events, arriving])).ok


async def test_an_invariant_that_crashes_is_reported_as_a_problem(store: ProjectionStore) -> None:
    def broken(rows: Mapping[str, Any]) -> list[str]:
        raise KeyError("members")

    orgs = Projection("orgs", store=store, keys=keys, apply=apply, invariants=[broken])
    await orgs.handle(event("resource_created", 1))
    [problem] = (await orgs.validate()).problems
    assert "KeyError" in problem


# -- rebuild ------------------------------------------------------------------------------


async def test_a_rebuild_repairs_a_corrupted_model_and_switches_to_it(
    store: ProjectionStore,
) -> None:
    orgs = projection(store)
    events = some_events(25)
    for item in events:
        await orgs.handle(item)
    await corrupt(store, 1, "org:1", {"members": ["mallory"], "resources": 0})
    report = await orgs.rebuild(events)
    assert report == RebuildReport(
        1, 2, replayed=25, live=0, switched=True, validation=ValidationReport(2, (), 5)
    )
    assert await orgs.rows() == independent_fold(events)
    assert await store.active("orgs") == 2
    assert await store.versions("orgs") == [2]


async def test_the_old_version_serves_and_live_events_reach_the_new_one_during_a_rebuild(
    store: ProjectionStore,
) -> None:
    clock = VirtualClock(auto_advance=False)
    orgs = projection(store, clock)
    history = some_events(20)
    for item in history:
        await orgs.handle(item)
    await corrupt(store, 1, "org:1", {"members": ["mallory"], "resources": 0})
    live = [event("member_added", 1, 9), event("member_removed", 1, 9), event("member_added", 5)]
    reads: list[Any] = []
    report: list[RebuildReport] = []

    async def rebuild() -> None:
        report.append(await orgs.rebuild(history, batch=2, pause=1.0))

    async with clock.autojump():
        async with anyio.create_task_group() as group:
            group.start_soon(rebuild)
            for item in live:
                await clock.asleep(1.5)
                assert orgs.rebuilding
                await orgs.handle(item)
                reads.append(await orgs.get("org:1"))
    assert all(read["members"][:1] == ["mallory"] for read in reads)  # v1 served meanwhile
    assert report[0].live == len(live)
    assert report[0].switched
    assert await orgs.rows() == independent_fold([*history, *live])


async def test_a_rebuild_that_fails_validation_keeps_the_old_version(
    store: ProjectionStore,
) -> None:
    orgs = projection(store)
    events = some_events(10)
    for item in events:
        await orgs.handle(item)
    bogus = [*events, event("resource_created", 3)]
    strict = Projection(
        "orgs",
        store=store,
        keys=keys,
        apply=apply,
        invariants=[lambda rows: ["too many"] if len(rows) > 0 else []],
    )
    report = await strict.rebuild(bogus)
    assert not report.switched
    assert report.validation is not None
    assert report.validation.problems == ("too many",)
    assert await store.versions("orgs") == [1]
    assert await strict.rows() == independent_fold(events)


async def test_a_second_rebuild_at_once_is_refused(store: ProjectionStore) -> None:
    clock = VirtualClock(auto_advance=False)
    orgs = projection(store, clock)
    events = some_events(6)
    async with clock.autojump():
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: orgs.rebuild(events, batch=1, pause=1.0))
            await clock.asleep(0.5)
            with pytest.raises(RuntimeError, match="already running"):
                await orgs.rebuild(events)
    assert not orgs.rebuilding


async def test_a_version_left_by_an_interrupted_rebuild_is_dropped_by_the_next(
    store: ProjectionStore,
) -> None:
    orgs = projection(store)
    events = some_events(5)
    for item in events:
        await orgs.handle(item)
    await store.create("orgs")  # a rebuild that crashed before switching
    report = await orgs.rebuild(events)
    assert report.new_version == 3
    assert await store.versions("orgs") == [3]


async def test_an_in_place_rebuild_shows_a_partial_model_and_holds_live_events(
    store: ProjectionStore,
) -> None:
    clock = VirtualClock(auto_advance=False)
    orgs = projection(store, clock)
    history = [event("resource_created", 1) for _ in range(6)]
    for item in history:
        await orgs.handle(item)
    late = event("resource_created", 1)
    seen: list[int] = []
    report: list[RebuildReport] = []
    handled_at: list[float] = []

    async def rebuild() -> None:
        report.append(await orgs.rebuild(history, batch=2, pause=1.0, in_place=True))

    async def live() -> None:
        await orgs.handle(late)
        handled_at.append(clock.monotonic())

    async with clock.autojump():
        async with anyio.create_task_group() as group:
            group.start_soon(rebuild)
            await clock.asleep(0.5)
            group.start_soon(live)
            await clock.asleep(0.5)
            seen.append((await orgs.get("org:1"))["resources"])
    assert seen[0] < len(history)  # readers saw a partial model
    assert handled_at[0] >= 2.0  # the live event waited for the replay
    assert report[0].new_version == report[0].old_version == 1
    assert await orgs.rows() == independent_fold([*history, late])


async def test_a_projection_keeps_its_own_log_and_rebuilds_from_it(
    store: ProjectionStore,
) -> None:
    orgs = Projection("orgs", store=store, keys=keys, apply=apply, keep_log=True)
    events = some_events(12)
    for item in events:
        await orgs.handle(item)
        await orgs.handle(item)  # a redelivery is neither applied nor logged twice
    assert [item.id async for item in orgs.log(page=5)] == [item.id for item in events]
    await corrupt(store, 1, "org:1", {"members": ["mallory"], "resources": 0})
    assert not (await orgs.validate(events=orgs.log())).ok
    report = await orgs.rebuild(orgs.log())
    assert report.replayed == 12
    assert await orgs.rows() == independent_fold(events)
    assert [item.id async for item in orgs.log()] == [item.id for item in events]


async def test_reading_the_log_of_a_projection_without_one_is_refused() -> None:
    orgs = projection(MemoryProjectionStore())
    with pytest.raises(ConfigurationError) as caught:
        [item async for item in orgs.log()]
    assert caught.value.parameter == "keep_log"


async def test_an_async_log_is_read_lazily(store: ProjectionStore) -> None:
    orgs = projection(store)
    events = some_events(8)

    async def log() -> AsyncIterator[Event]:
        for item in events:
            yield item

    for item in events:
        await orgs.handle(item)
    assert (await orgs.validate(events=log())).ok
    assert (await orgs.rebuild(log())).replayed == 8


# -- stores -------------------------------------------------------------------------------


async def test_a_store_never_reuses_a_version_number(store: ProjectionStore) -> None:
    first = await store.create("orgs")
    await store.drop("orgs", first)
    assert await store.create("orgs") == first + 1


async def test_a_store_refuses_to_activate_a_version_it_does_not_have(
    store: ProjectionStore,
) -> None:
    with pytest.raises(LookupError):
        await store.activate("orgs", 7)


async def test_a_store_keeps_values_as_json(store: ProjectionStore) -> None:
    version = await store.create("orgs")
    await store.apply("orgs", version, "e1", ["a"], lambda rows: {"a": (1, 2)})
    assert await store.get("orgs", version, "a") == [1, 2]
    await store.apply("orgs", version, "e2", ["a"], lambda rows: {"a": None})
    assert await store.snapshot("orgs", version) == ({}, frozenset({"e1", "e2"}))


async def test_dropping_the_active_version_leaves_none_active(store: ProjectionStore) -> None:
    version = await store.create("orgs")
    await store.activate("orgs", version)
    await store.drop("orgs", version)
    assert await store.active("orgs") is None


def test_the_sqlite_store_writes_nothing_when_the_fold_fails(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "p.db") as sqlite_store:
        projections = sqlite_store.projections

        def boom(rows: Mapping[str, Any]) -> Mapping[str, Any]:
            raise RuntimeError("bug")

        async def main() -> tuple[dict[str, Any], frozenset[str]]:
            version = await projections.create("orgs")
            with pytest.raises(RuntimeError):
                await projections.apply("orgs", version, "e1", ["a"], boom)
            return await projections.snapshot("orgs", version)

        assert anyio.run(main) == ({}, frozenset())
        assert repr(projections).endswith(".projections")
        rows = sqlite3.connect(tmp_path / "p.db").execute("SELECT count(*) FROM rk_projection_rows")
        assert rows.fetchone() == (0,)


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameter", "overrides"),
    [
        ("name", {"name": ""}),
        ("store", {"store": object()}),
        ("keys", {"keys": "org"}),
        ("apply", {"apply": None}),
        ("invariants", {"invariants": [1]}),
    ],
)
def test_a_misconfigured_projection_names_the_parameter(
    parameter: str, overrides: dict[str, Any]
) -> None:
    arguments: dict[str, Any] = {
        "name": "orgs",
        "store": MemoryProjectionStore(),
        "keys": keys,
        "apply": apply,
        "invariants": (),
    }
    arguments.update(overrides)
    name = arguments.pop("name")
    with pytest.raises(ConfigurationError) as caught:
        Projection(name, **arguments)
    assert caught.value.parameter == parameter


@pytest.mark.parametrize(
    ("parameter", "call"),
    [
        ("batch", lambda p: p.rebuild([], batch=0)),
        ("pause", lambda p: p.rebuild([], pause=-1.0)),
        ("sample", lambda p: p.validate(sample=0)),
    ],
)
async def test_bad_rebuild_and_validation_arguments_name_the_parameter(
    parameter: str, call: Callable[[Projection], Any]
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        await call(projection(MemoryProjectionStore()))
    assert caught.value.parameter == parameter


def test_a_projection_shows_its_name_and_version() -> None:
    assert repr(projection(MemoryProjectionStore())) == "Projection('orgs', version=None)"


# -- the property: any history, any corruption, any live traffic --------------------------

kinds = st.sampled_from(["member_added", "member_removed", "resource_created"])
events_strategy = st.lists(
    st.builds(event, kinds, st.integers(0, 3), st.integers(0, 2)), max_size=25
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=events_strategy,
    live=events_strategy,
    corrupted=st.lists(st.integers(0, 3), max_size=3),
    batch=st.integers(1, 6),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=5),
    in_place=st.booleans(),
)
def test_a_rebuilt_model_equals_an_independent_fold_of_every_event(
    backend: str,
    history: list[Event],
    live: list[Event],
    corrupted: list[int],
    batch: int,
    gaps: list[float],
    in_place: bool,
) -> None:
    async def main() -> None:
        clock = VirtualClock(auto_advance=False)
        store = MemoryProjectionStore()
        orgs = Projection("orgs", store=store, keys=keys, apply=apply, keep_log=True, clock=clock)
        for item in history:
            await orgs.handle(item)
        version = await orgs._current()
        for org in corrupted:
            await corrupt(store, version, f"org:{org}", {"members": ["x"], "resources": -1})
        log = list(history)

        async def rebuild() -> None:
            await orgs.rebuild(
                orgs.log(), batch=batch, pause=1.0, validate=False, in_place=in_place
            )

        async with clock.autojump():
            async with anyio.create_task_group() as group:
                group.start_soon(rebuild)
                for number, item in enumerate(live):
                    await clock.asleep(gaps[number % len(gaps)])
                    log.append(item)  # the log first, as a consumer appends before applying
                    await orgs.handle(item)
        assert await orgs.rows() == independent_fold(log)
        assert await store.versions("orgs") == [orgs.version]
        assert [item.id async for item in orgs.log()] == [item.id for item in log]

    anyio.run(main, backend=backend)
