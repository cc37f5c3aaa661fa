"""`Projection`: a read model folded from events, in versions that are rebuilt and switched.

A read model (per-org counters, a search index, a report) is a pure fold of the events
it was built from. When its rows go wrong — a bug in the fold, a bad migration, a
corrupted disk — the cure is to fold the event log again. `Projection` keeps the model
in *versions*: the active one serves reads and takes live events, while `rebuild`
replays the log into a fresh version beside it; the new version is checked and then
made active in one step, so readers never see a half-built model.

The fold is pure and the store is a protocol (`ProjectionStore`): the decisions — which
rows an event touches and what they become — are the user's two functions, and every
backend applies them the same way, one event per transaction, once per version. With
``keep_log=True`` the same transaction appends the event to the projection's own event
log, so the model, its log and its record of applied events never disagree.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import anyio

from resilience_kit._checks import check_int, check_name, check_positive
from resilience_kit.clock import Clock, resolve_clock
from resilience_kit.errors import ConfigurationError
from resilience_kit.messaging._event import Event

__all__ = (
    "Projection",
    "ProjectionStore",
    "RebuildReport",
    "ValidationReport",
)

KeysOf = Callable[[Event], Iterable[str]]
"""The keys of the rows an event touches."""
Fold = Callable[[Event, Mapping[str, Any]], Mapping[str, Any]]
"""Given an event and the current values of its rows (absent rows left out), the new
values of the rows it changes; ``None`` deletes a row."""
Invariant = Callable[[Mapping[str, Any]], Iterable[str]]
"""Given every row of a version, the problems found (nothing when all is well)."""
Update = Callable[[Mapping[str, Any]], Mapping[str, Any]]


@runtime_checkable
class ProjectionStore(Protocol):
    """Where a `Projection` keeps its versions: rows of JSON values, per name and version.

    Versions are numbered from 1 and never reused. At most one version of a name is
    active. Each version records the ids of the events applied to it, so an event is
    applied to a version at most once; `apply` reads the rows, calls ``update`` and
    writes its result in one transaction, so concurrent events on shared rows never
    lose an update. Each name also has an append-only event log (positions from 1),
    written by `apply` when given a ``record``.

    Implemented by `resilience_kit.stores.memory.MemoryProjectionStore` and
    ``SQLiteStore(...).projections``.
    """

    async def active(self, name: str) -> int | None:
        """The active version of ``name``, or None."""
        ...

    async def versions(self, name: str) -> list[int]:
        """Every version of ``name`` that exists (active or not), in order."""
        ...

    async def create(self, name: str) -> int:
        """A new, empty, inactive version: one more than any version ``name`` ever had."""
        ...

    async def activate(self, name: str, version: int) -> None:
        """Make ``version`` the active one, in one step (the previous one stays, inactive)."""
        ...

    async def clear(self, name: str, version: int) -> None:
        """Delete the rows and applied event ids of ``version``; the version stays."""
        ...

    async def drop(self, name: str, version: int) -> None:
        """Delete ``version`` with its rows and applied event ids."""
        ...

    async def apply(
        self,
        name: str,
        version: int,
        event_id: str,
        keys: Sequence[str],
        update: Update,
        *,
        record: bytes | None = None,
    ) -> bool:
        """Apply one event to ``version`` in one transaction; False if it was applied before.

        Reads the rows ``keys`` that exist, calls ``update`` with them, writes the
        mapping it returns (``None`` deletes a row) and records ``event_id``. With a
        ``record`` (the event's bytes), also appends it to the log of ``name``, unless
        the log holds ``event_id`` already.
        """
        ...

    async def read_log(self, name: str, *, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` entries of the log of ``name`` after position ``after``, in order."""
        ...

    async def get(self, name: str, version: int, key: str) -> Any | None:
        """The value of one row of ``version``, or None."""
        ...

    async def snapshot(self, name: str, version: int) -> tuple[dict[str, Any], frozenset[str]]:
        """Every row of ``version`` and the ids of the events applied to it, read together."""
        ...


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """What `Projection.validate` found in one version of a read model.

    Attributes:
        version: the version checked.
        problems: one sentence per problem (empty: the version is valid).
        rows: how many rows the version holds.
        compared: how many rows were compared with a fold of the events (0: none).

    Examples:
        >>> report = ValidationReport(2, (), rows=10, compared=10)
        >>> report.ok
        True
    """

    version: int
    problems: tuple[str, ...]
    rows: int
    compared: int = 0

    @property
    def ok(self) -> bool:
        """Whether no problem was found."""
        return not self.problems


@dataclass(frozen=True, slots=True)
class RebuildReport:
    """What `Projection.rebuild` did.

    Attributes:
        old_version: the version active when the rebuild began (None: there was none).
        new_version: the version built (the old one again for an in-place rebuild).
        replayed: events of the log applied to the new version.
        live: events handled during the rebuild and applied to the new version after
            the replay.
        switched: whether the new version is now the active one (False: it failed
            validation and was dropped; the old version still serves).
        validation: the new version's validation, if it was validated.

    Examples:
        >>> RebuildReport(1, 2, replayed=40, live=3, switched=True, validation=None).switched
        True
    """

    old_version: int | None
    new_version: int
    replayed: int
    live: int
    switched: bool
    validation: ValidationReport | None


@dataclass(eq=False)
class _Build:
    version: int
    in_place: bool
    pending: deque[Event] = field(default_factory=deque)
    done: anyio.Event = field(default_factory=anyio.Event)


class Projection:
    """A read model folded from events, kept in versions: rebuilt beside the one serving.

    Give it the fold as two pure functions: ``keys(event)``, the rows an event touches,
    and ``apply(event, rows)``, the new values of those rows from their current values
    (absent rows are left out of ``rows``; return ``None`` to delete one). Then:

    - `handle` applies a live event to the active version (use it as, or in, a
      `ResilientConsumer` handler); an event is applied at most once per version;
    - `get` reads a row of the active version;
    - `validate` checks a version: your invariants over all its rows, and optionally a
      comparison with a fold of the event log (all rows, or a random sample);
    - `rebuild` replays the event log into a new version while the active one keeps
      serving reads and taking live events; events that arrive meanwhile are applied to
      the new version after the replay, in their order; the new version is validated
      and, if valid, made active in one step, and the old one dropped.

    With ``keep_log=True``, `handle` also appends each event to the projection's own
    log in the same transaction; `log` reads it back, for `rebuild` and `validate`.

    Use one `Projection` object per read model in a process, where its events are
    handled: the rebuild hands live events over to the new version through it.

    Args:
        name: the read model's name (its rows' namespace in the store).
        store: where the versions live (a `ProjectionStore`).
        keys: the rows an event touches.
        apply: the new values of those rows.
        invariants: checks run by `validate`, each given every row, returning problems.
        keep_log: keep an event log of the events handled, in the store.
        clock: the clock `rebuild` paces itself on (default: the system clock).

    Raises:
        ConfigurationError: a parameter is invalid (named in the message).

    Examples:
        >>> import anyio
        >>> from resilience_kit.messaging import Event, Projection
        >>> from resilience_kit.stores.memory import MemoryProjectionStore
        >>> def keys(event):
        ...     return [event.key]
        >>> def apply(event, rows):
        ...     members = set(rows.get(event.key, []))
        ...     if event.type == "member_added":
        ...         members.add(event.payload["user"])
        ...     else:
        ...         members.discard(event.payload["user"])
        ...     return {event.key: sorted(members)}
        >>> log = [
        ...     Event(type="member_added", key="org:1", payload={"user": "ann"}),
        ...     Event(type="member_added", key="org:1", payload={"user": "bob"}),
        ...     Event(type="member_removed", key="org:1", payload={"user": "ann"}),
        ... ]
        >>> async def main():
        ...     members = Projection(
        ...         "members", store=MemoryProjectionStore(), keys=keys, apply=apply
        ...     )
        ...     for event in log:
        ...         await members.handle(event)
        ...     print(await members.get("org:1"), members.version)
        ...     report = await members.rebuild(log)  # fold the log again, beside v1
        ...     print(await members.get("org:1"), members.version, report.replayed)
        >>> anyio.run(main)
        ['bob'] 1
        ['bob'] 2 3
    """

    def __init__(
        self,
        name: str,
        *,
        store: ProjectionStore,
        keys: KeysOf,
        apply: Fold,
        invariants: Sequence[Invariant] = (),
        keep_log: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self.name = check_name("name", name)
        if not isinstance(store, ProjectionStore):
            raise ConfigurationError("store", f"must implement ProjectionStore, got {store!r}")
        if not callable(keys):
            raise ConfigurationError("keys", f"must be a callable, got {keys!r}")
        if not callable(apply):
            raise ConfigurationError("apply", f"must be a callable, got {apply!r}")
        if isinstance(invariants, (str, bytes)) or not all(callable(i) for i in invariants):
            raise ConfigurationError(
                "invariants", f"must be a sequence of callables, got {invariants!r}"
            )
        self.store = store
        self._keys = keys
        self._apply = apply
        self._invariants = tuple(invariants)
        self.keep_log = bool(keep_log)
        self._clock = clock
        self._active: int | None = None
        self._loaded = False
        self._loading = anyio.Lock()
        self._build: _Build | None = None

    def __repr__(self) -> str:
        return f"Projection({self.name!r}, version={self._active})"

    @property
    def version(self) -> int | None:
        """The active version, as this object knows it (None before the first use)."""
        return self._active

    @property
    def rebuilding(self) -> bool:
        """Whether a `rebuild` is running."""
        return self._build is not None

    # -- the fold -------------------------------------------------------------------------

    def _keys_of(self, event: Event) -> list[str]:
        return list(dict.fromkeys(self._keys(event)))

    def _update(self, event: Event, keys: list[str]) -> Update:
        def update(rows: Mapping[str, Any]) -> Mapping[str, Any]:
            changes = self._apply(event, rows)
            stray = set(changes) - set(keys)
            if stray:
                raise ValueError(
                    f"projection {self.name!r}: apply() changed rows {sorted(stray)} that"
                    f" keys() did not name for event {event.type!r}"
                )
            return changes

        return update

    def fold(self, events: Iterable[Event]) -> dict[str, Any]:
        """Fold ``events`` in memory with the same functions: the model they make.

        Each event counts once (by id), in the order given.

        Examples:
            >>> from resilience_kit.messaging import Event
            >>> from resilience_kit.stores.memory import MemoryProjectionStore
            >>> counts = Projection(
            ...     "counts", store=MemoryProjectionStore(), keys=lambda e: [e.type],
            ...     apply=lambda e, rows: {e.type: rows.get(e.type, 0) + 1},
            ... )
            >>> counts.fold([Event(type="signup", key="u:1", payload={})] * 2)
            {'signup': 1}
        """
        rows: dict[str, Any] = {}
        seen: set[str] = set()
        for event in events:
            event_id = str(event.id)
            if event_id in seen:
                continue
            seen.add(event_id)
            keys = self._keys_of(event)
            current = {key: rows[key] for key in keys if key in rows}
            for key, value in self._update(event, keys)(current).items():
                if value is None:
                    rows.pop(key, None)
                else:
                    rows[key] = value
        return rows

    # -- live events and reads ------------------------------------------------------------

    async def _current(self) -> int:
        if not self._loaded:
            async with self._loading:  # the first events arrive together: one creates v1
                if not self._loaded:
                    active = await self.store.active(self.name)
                    if active is None:
                        active = await self.store.create(self.name)
                        await self.store.activate(self.name, active)
                    self._active, self._loaded = active, True
        return self._active  # type: ignore[return-value]  # set with _loaded

    async def _apply_to(self, version: int, event: Event, *, live: bool = False) -> bool:
        keys = self._keys_of(event)
        record = event.to_json() if live and self.keep_log else None
        return await self.store.apply(
            self.name, version, str(event.id), keys, self._update(event, keys), record=record
        )

    async def handle(self, event: Event) -> bool:
        """Apply a live event to the active version; False if it was applied before.

        During a `rebuild` the event is also queued for the new version; during an
        in-place rebuild it waits for the replay to end. Exceptions of the fold or the
        store propagate, so a consumer retries or dead-letters the event.
        """
        build = self._build
        if build is not None and build.in_place:
            await build.done.wait()  # the model is being replayed in place: wait our turn
            build = self._build
        active = await self._current()
        if build is not None:
            # Queued before applying: a rebuild switches only with an empty queue, so no
            # event that started here before the switch can miss the new version.
            build.pending.append(event)
        return await self._apply_to(active, event, live=True)

    async def log(self, *, page: int = 500) -> AsyncIterator[Event]:
        """The projection's event log, oldest first, read in pages (``keep_log=True``).

        Pass it to `rebuild` and `validate`. Events appended while it is read are read
        too.

        Raises:
            ConfigurationError: the projection keeps no log, or ``page`` < 1.
        """
        if not self.keep_log:
            raise ConfigurationError("keep_log", "is False: this projection keeps no log")
        check_int("page", page, minimum=1)
        position = 0
        while True:
            entries = await self.store.read_log(self.name, after=position, limit=page)
            if not entries:
                return
            for position, data in entries:  # noqa: B007 - the next page starts after it
                yield Event.from_json(data)

    async def get(self, key: str, default: Any = None) -> Any:
        """The value of row ``key`` in the active version (``default`` when absent)."""
        value = await self.store.get(self.name, await self._current(), key)
        return default if value is None else value

    async def rows(self, version: int | None = None) -> dict[str, Any]:
        """Every row of ``version`` (default: the active one)."""
        chosen = await self._current() if version is None else version
        rows, _ = await self.store.snapshot(self.name, chosen)
        return rows

    # -- validation -----------------------------------------------------------------------

    async def validate(
        self,
        *,
        version: int | None = None,
        events: Iterable[Event] | AsyncIterable[Event] | None = None,
        sample: int | None = None,
        rand: random.Random | None = None,
    ) -> ValidationReport:
        """Check a version: the invariants, and optionally a comparison with the events.

        The version's rows and applied event ids are read first, then ``events`` (the
        event log, in its order; an iterable read lazily is read after the rows). Only
        events the version has applied are folded, so live events arriving meanwhile do
        not count as differences.

        Args:
            version: the version to check (default: the active one).
            events: the event log to compare with (None: invariants only).
            sample: compare this many rows, chosen at random (None: every row).
            rand: the random source for the sample (default: a new one).

        Raises:
            ConfigurationError: ``sample`` is not an int >= 1.

        Examples:
            >>> import anyio
            >>> from resilience_kit.messaging import Event
            >>> from resilience_kit.stores.memory import MemoryProjectionStore
            >>> counts = Projection(
            ...     "counts", store=MemoryProjectionStore(), keys=lambda e: [e.type],
            ...     apply=lambda e, rows: {e.type: rows.get(e.type, 0) + 1},
            ...     invariants=[lambda rows: [f"{k} < 0" for k, v in rows.items() if v < 0]],
            ... )
            >>> log = [Event(type="signup", key="u:1", payload={})]
            >>> async def main():
            ...     await counts.handle(log[0])
            ...     return await counts.validate(events=log)
            >>> anyio.run(main).ok
            True
        """
        if sample is not None:
            check_int("sample", sample, minimum=1)
        chosen = await self._current() if version is None else version
        rows, applied = await self.store.snapshot(self.name, chosen)
        problems: list[str] = []
        for invariant in self._invariants:
            problems.extend(_run(invariant, rows))
        compared = 0
        if events is not None:
            log = [event async for event in _aiter(events) if str(event.id) in applied]
            expected = self.fold(log)
            keys = sorted(set(rows) | set(expected))
            if sample is not None and sample < len(keys):
                keys = sorted((rand or random.Random()).sample(keys, sample))
            problems.extend(
                f"row {key!r} is {rows.get(key)!r}; the events make it {expected.get(key)!r}"
                for key in keys
                if rows.get(key) != expected.get(key)
            )
            compared = len(keys)
        return ValidationReport(chosen, tuple(problems), rows=len(rows), compared=compared)

    # -- rebuild --------------------------------------------------------------------------

    async def rebuild(
        self,
        events: Iterable[Event] | AsyncIterable[Event],
        *,
        batch: int = 100,
        pause: float = 0.0,
        validate: bool = True,
        in_place: bool = False,
    ) -> RebuildReport:
        """Replay the event log into a new version, then switch to it in one step.

        The active version keeps serving `get` and taking `handle` meanwhile; events
        handled during the rebuild are applied to the new version after the replay (those
        the replay already applied are skipped). The new version is validated (the
        invariants); if it fails, it is dropped and the old one stays active. Versions
        left behind by an interrupted rebuild are dropped first.

        ``in_place=True`` clears the active version and replays into it instead: for
        storage that cannot hold two copies, at the price of readers seeing a partial
        model until the replay ends. `handle` then waits for the end of the replay.

        Args:
            events: the event log, oldest first, holding at least every event handled
                before the rebuild began.
            batch: events replayed between two pauses.
            pause: seconds to wait on the clock after each batch, so that a rebuild
                leaves room to the live work on the same database.
            validate: check the invariants before switching.
            in_place: rebuild the active version itself (see above).

        Raises:
            ConfigurationError: ``batch`` or ``pause`` is invalid.
            RuntimeError: a rebuild of this projection is already running.

        Examples:
            >>> import anyio
            >>> from resilience_kit.messaging import Event
            >>> from resilience_kit.stores.memory import MemoryProjectionStore
            >>> store = MemoryProjectionStore()
            >>> counts = Projection(
            ...     "counts", store=store, keys=lambda e: [e.type],
            ...     apply=lambda e, rows: {e.type: rows.get(e.type, 0) + 1},
            ... )
            >>> log = [Event(type="signup", key=f"u:{n}", payload={}) for n in range(3)]
            >>> async def main():
            ...     for event in log:
            ...         await counts.handle(event)
            ...     bad = lambda rows: {"signup": -7}  # a bad write, behind the fold's back
            ...     await store.apply("counts", 1, "bad-write", ["signup"], bad)
            ...     print((await counts.validate(events=log)).ok)
            ...     report = await counts.rebuild(log)
            ...     print(report.switched, await counts.get("signup"))
            ...     print(await store.versions("counts"))
            >>> anyio.run(main)
            False
            True 3
            [2]
        """
        check_int("batch", batch, minimum=1)
        check_positive("pause", pause, allow_zero=True)
        if self._build is not None:
            raise RuntimeError(f"a rebuild of projection {self.name!r} is already running")
        build = self._build = _Build(0, in_place=in_place)  # claimed before any await
        try:
            old = build.version = await self._current()
            for stale in await self.store.versions(self.name):
                if stale != old:
                    await self.store.drop(self.name, stale)
            if in_place:
                await self.store.clear(self.name, old)
            else:
                build.version = await self.store.create(self.name)
            return await self._replay(
                old, build, events, batch=batch, pause=pause, validate=validate
            )
        finally:
            build.done.set()
            self._build = None

    async def _replay(
        self,
        old: int,
        build: _Build,
        events: Iterable[Event] | AsyncIterable[Event],
        *,
        batch: int,
        pause: float,
        validate: bool,
    ) -> RebuildReport:
        target = build.version
        replayed = in_batch = 0
        async for event in _aiter(events):
            replayed += await self._apply_to(target, event)
            in_batch += 1
            if in_batch == batch:
                in_batch = 0
                if pause:
                    await resolve_clock(self._clock).asleep(pause)
        live = await self._drain(build)
        report = await self.validate(version=target) if validate else None
        if report is not None and not report.ok and not build.in_place:
            await self.store.drop(self.name, target)
            return RebuildReport(old, target, replayed, live, switched=False, validation=report)
        live += await self._drain(build)
        # The queue is empty and nothing awaits between here and the switch: an event
        # handled from now on goes to the new version directly.
        self._active = target
        self._build = None
        if not build.in_place:
            await self.store.activate(self.name, target)
            await self.store.drop(self.name, old)
        return RebuildReport(old, target, replayed, live, switched=True, validation=report)

    async def _drain(self, build: _Build) -> int:
        applied = 0
        while build.pending:
            applied += await self._apply_to(build.version, build.pending.popleft())
        return applied


def _run(invariant: Invariant, rows: Mapping[str, Any]) -> list[str]:
    try:
        return [str(problem) for problem in invariant(rows)]
    except Exception as exc:  # noqa: BLE001 - a crashing check is a finding too
        return [f"invariant {invariant!r} raised {type(exc).__name__}: {exc}"]


async def _aiter(events: Iterable[Event] | AsyncIterable[Event]) -> AsyncIterable[Event]:
    if isinstance(events, AsyncIterable):
        async for event in events:
            yield event
    else:
        for event in events:
            yield event
