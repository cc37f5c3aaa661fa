"""Saga: every prefix of completed steps is compensated in reverse order on a failure."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience_kit import Backoff, RetryPolicy
from resilience_kit.errors import ConfigurationError
from resilience_kit.messaging import (
    MemorySagaJournal,
    Saga,
    SagaMark,
    SagaResult,
    SagaStatus,
    SagaStep,
    saga_plan,
)
from resilience_kit.testing import VirtualClock


class Crash(BaseException):
    """A process dying mid-saga: not an Exception, so the saga does not catch it."""


def build(
    count: int,
    *,
    fail_at: int | None,
    abandon: frozenset[int] = frozenset(),
    crash_after: int | None = None,
    without_compensation: frozenset[int] = frozenset(),
) -> tuple[list[SagaStep[list[str]]], list[int]]:
    """``count`` steps that log into the context; step ``fail_at`` always fails;
    compensations of ``abandon`` always fail; the ``crash_after``-th call crashes."""
    calls = [0]

    def tick() -> None:
        calls[0] += 1
        if crash_after is not None and calls[0] == crash_after:
            raise Crash

    def action(index: int) -> Any:
        async def act(log: list[str]) -> None:
            tick()
            if index == fail_at:
                raise ConnectionError(f"step {index} failed")
            log.append(f"do {index}")

        return act

    def compensation(index: int) -> Any:
        async def undo(log: list[str]) -> None:
            tick()
            if index in abandon:
                raise ConnectionError(f"undo {index} failed")
            log.append(f"undo {index}")

        return undo

    steps = [
        SagaStep(
            f"s{index}",
            action(index),
            None if index in without_compensation else compensation(index),
        )
        for index in range(count)
    ]
    return steps, calls


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(1, 8),
    fail_at=st.one_of(st.none(), st.integers(0, 7)),
    abandon=st.frozensets(st.integers(0, 7)),
    bare=st.frozensets(st.integers(0, 7)),
)
def test_every_prefix_of_completed_steps_is_compensated_in_reverse_order(
    count: int, fail_at: int | None, abandon: frozenset[int], bare: frozenset[int]
) -> None:
    fail = None if fail_at is None or fail_at >= count else fail_at
    steps, _ = build(count, fail_at=fail, abandon=abandon, without_compensation=bare)
    log: list[str] = []
    result = anyio.run(Saga("s", steps).run, log)
    if fail is None:
        assert result.status is SagaStatus.COMPLETED
        assert log == [f"do {i}" for i in range(count)]
        assert result.compensated == result.abandoned == ()
        return
    done = list(range(fail))
    undone = [i for i in reversed(done) if i not in bare and i not in abandon]
    assert log == [f"do {i}" for i in done] + [f"undo {i}" for i in undone]
    assert result.failed_step == f"s{fail}"
    assert result.completed == tuple(f"s{i}" for i in done)
    given_up = abandon - bare  # a step without a compensation has nothing to give up on
    assert result.compensated == tuple(f"s{i}" for i in reversed(done) if i not in given_up)
    assert result.abandoned == tuple(f"s{i}" for i in reversed(done) if i in given_up)
    expected = SagaStatus.FAILED if result.abandoned else SagaStatus.COMPENSATED
    assert result.status is expected
    assert result.error == f"ConnectionError: step {fail} failed"


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(1, 6),
    fail_at=st.one_of(st.none(), st.integers(0, 5)),
    crash_after=st.integers(1, 12),
)
def test_a_saga_resumed_from_its_journal_ends_as_an_uninterrupted_one(
    count: int, fail_at: int | None, crash_after: int
) -> None:
    fail = None if fail_at is None or fail_at >= count else fail_at
    journal = MemorySagaJournal()
    log: list[str] = []
    crashing, _ = build(count, fail_at=fail, crash_after=crash_after)
    try:
        anyio.run(lambda: Saga("s", crashing, journal=journal).run(log, run_id="r"))
    except Crash:
        pass
    steps, _ = build(count, fail_at=fail)
    resumed = anyio.run(lambda: Saga("s", steps, journal=journal).run(log, run_id="r"))
    reference_log: list[str] = []
    reference = anyio.run(Saga("s", build(count, fail_at=fail)[0]).run, reference_log)
    assert (resumed.status, resumed.completed, resumed.compensated) == (
        reference.status,
        reference.completed,
        reference.compensated,
    )
    # A crash is never inside a journaled step, so nothing ran twice.
    assert log == reference_log
    again, calls = build(count, fail_at=fail)
    finished = anyio.run(lambda: Saga("s", again, journal=journal).run(log, run_id="r"))
    assert calls == [0]  # the run is over: nothing runs again
    assert finished.status is reference.status


@pytest.mark.anyio
async def test_a_step_is_retried_with_its_policy_before_it_counts_as_failed() -> None:
    clock = VirtualClock()
    tries: list[float] = []

    async def flaky(_: object) -> None:
        tries.append(clock.monotonic())
        if len(tries) < 3:
            raise ConnectionError("blip")

    retry = RetryPolicy(attempts=3, on=ConnectionError, backoff=Backoff.constant(2.0), clock=clock)
    result = await Saga("s", [SagaStep("flaky", flaky)], retry=retry).run(None)
    assert result.succeeded
    assert tries == [0.0, 2.0, 4.0]


@pytest.mark.anyio
async def test_a_steps_own_retry_policy_wins_over_the_sagas() -> None:
    attempts = 0

    async def down(_: object) -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("down")

    own = RetryPolicy(attempts=2, on=ConnectionError, backoff=Backoff.none())
    saga = Saga("s", [SagaStep("down", down, retry=own)], retry=RetryPolicy(attempts=5))
    result = await saga.run(None)
    assert result.status is SagaStatus.COMPENSATED
    assert attempts == 2


@pytest.mark.anyio
async def test_cancellation_is_not_a_failed_step() -> None:
    compensated = False

    async def first(_: object) -> None:
        pass

    async def undo(_: object) -> None:
        nonlocal compensated
        compensated = True

    async def hang(_: object) -> None:
        await anyio.sleep_forever()

    saga = Saga("s", [SagaStep("first", first, undo), SagaStep("hang", hang)])
    with anyio.move_on_after(0.01):
        await saga.run(None)
    assert not compensated


def test_the_plan_is_over_once_every_done_step_is_settled() -> None:
    marks = [("a", SagaMark.DONE), ("b", SagaMark.FAILED), ("a", SagaMark.ABANDONED)]
    result = saga_plan(["a", "b"], marks)
    assert isinstance(result, SagaResult)
    assert (result.status, result.abandoned) == (SagaStatus.FAILED, ("a",))


@pytest.mark.parametrize(
    ("args", "kwargs", "parameter"),
    [
        ((), {}, "steps"),
        ((SagaStep("a", None), SagaStep("a", None)), {}, "steps"),  # type: ignore[arg-type]
        (("not a step",), {}, "steps"),
        ((SagaStep("a", None),), {"retry": 3}, "retry"),  # type: ignore[arg-type]
        ((SagaStep("a", None),), {"journal": object()}, "journal"),  # type: ignore[arg-type]
    ],
)
def test_a_misconfigured_saga_names_the_parameter(
    args: tuple[Any, ...], kwargs: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ConfigurationError, match=parameter):
        Saga("s", list(args), **kwargs)


@pytest.mark.anyio
async def test_a_journaled_saga_needs_a_run_id() -> None:
    async def nothing(_: object) -> None:
        pass

    saga = Saga("s", [SagaStep("a", nothing)], journal=MemorySagaJournal())
    with pytest.raises(ConfigurationError, match="run_id"):
        await saga.run(None)
    assert repr(saga) == "Saga('s', steps=['a'])"
    assert repr(saga.journal) == "MemorySagaJournal(0 runs)"
