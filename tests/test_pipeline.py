from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience_kit import (
    Backoff,
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    ConfigurationError,
    Fallback,
    Pipeline,
    RetryPolicy,
    Timeout,
    TimeoutExceededError,
)
from resilience_kit.policies._base import P, R
from resilience_kit.testing import ChaosFault, ChaosLatency, VirtualClock
from resilience_kit.typing import Policy


class Recorder(Policy):
    """A policy that records when the call passes through it, on the way in and out."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def __repr__(self) -> str:
        return f"Recorder({self.name!r})"

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        def recorded(*args: P.args, **kwargs: P.kwargs) -> R:
            self.log.append(f"{self.name}>")
            try:
                return fn(*args, **kwargs)
            finally:
                self.log.append(f"<{self.name}")

        return recorded

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        async def recorded(*args: P.args, **kwargs: P.kwargs) -> R:
            self.log.append(f"{self.name}>")
            try:
                return await fn(*args, **kwargs)
            finally:
                self.log.append(f"<{self.name}")

        return recorded


OUTERMOST_FIRST = ["a>", "b>", "c>", "call", "<c", "<b", "<a"]


def test_sync_order_is_outermost_first() -> None:
    log: list[str] = []
    pipeline = Pipeline(Recorder("a", log), Recorder("b", log), Recorder("c", log))

    @pipeline
    def call() -> str:
        log.append("call")
        return "ok"

    assert call() == "ok"
    assert log == OUTERMOST_FIRST


@pytest.mark.anyio
async def test_async_order_is_outermost_first() -> None:
    log: list[str] = []
    pipeline = Pipeline(Recorder("a", log), Recorder("b", log), Recorder("c", log))

    @pipeline
    async def call() -> str:
        log.append("call")
        await anyio.lowlevel.checkpoint()
        return "ok"

    assert await call() == "ok"
    assert log == OUTERMOST_FIRST


def test_nested_pipelines_flatten() -> None:
    log: list[str] = []
    a, b, c, d = (Recorder(name, log) for name in "abcd")
    pipeline = Pipeline(Pipeline(a, b), c, Pipeline(Pipeline(d)))
    assert pipeline.policies == (a, b, c, d)
    assert repr(pipeline) == "Pipeline(Recorder('a'), Recorder('b'), Recorder('c'), Recorder('d'))"
    pipeline.call(log.append, "call")
    assert log == ["a>", "b>", "c>", "d>", "call", "<d", "<c", "<b", "<a"]


def test_a_single_policy_pipeline_is_that_policy() -> None:
    log: list[str] = []
    assert Pipeline(Recorder("a", log)).call(lambda: 5) == 5
    assert log == ["a>", "<a"]


def test_empty_pipeline_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        Pipeline()
    assert info.value.parameter == "policies"


@pytest.mark.parametrize("bad", [lambda fn: fn, RetryPolicy, "retry", None])
def test_a_non_policy_is_a_configuration_error(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="is not a policy") as info:
        Pipeline(RetryPolicy(), bad)  # type: ignore[arg-type]
    assert info.value.parameter == "policies"


def test_call_and_metadata_sync() -> None:
    pipeline = Pipeline(RetryPolicy(attempts=2, backoff=Backoff.none()), Bulkhead(1))

    def greet(name: str, *, punctuation: str = "!") -> str:
        """Greet someone."""
        return f"hello {name}{punctuation}"

    wrapped = pipeline(greet)
    assert wrapped("ann") == "hello ann!"
    assert pipeline.call(greet, "bob", punctuation="?") == "hello bob?"
    assert wrapped.__name__ == "greet"
    assert wrapped.__qualname__ == greet.__qualname__
    assert wrapped.__doc__ == "Greet someone."
    assert wrapped.__wrapped__ is greet  # type: ignore[attr-defined]
    assert inspect.signature(wrapped) == inspect.signature(greet)
    assert not inspect.iscoroutinefunction(wrapped)


@pytest.mark.anyio
async def test_acall_and_metadata_async() -> None:
    clock = VirtualClock()
    pipeline = Pipeline(Timeout(5, clock=clock), RetryPolicy(attempts=2, clock=clock))

    async def fetch(item: int) -> int:
        """Fetch an item."""
        await clock.asleep(1)
        return item * 2

    wrapped = pipeline(fetch)
    assert inspect.iscoroutinefunction(wrapped)
    assert wrapped.__name__ == "fetch"
    assert wrapped.__doc__ == "Fetch an item."
    assert inspect.signature(wrapped) == inspect.signature(fetch)
    assert await wrapped(2) == 4
    assert await pipeline.acall(fetch, 5) == 10
    assert clock.monotonic() == 2.0


def test_decorating_methods() -> None:
    class Client:
        def __init__(self) -> None:
            self.calls = 0

        @Pipeline(RetryPolicy(attempts=3, on=KeyError, backoff=Backoff.none()), Bulkhead(2))
        def get(self, key: str) -> str:
            self.calls += 1
            if self.calls < 2:
                raise KeyError(key)
            return key.upper()

    client = Client()
    assert client.get("x") == "X"
    assert client.calls == 2


def test_generators_are_refused() -> None:
    def numbers() -> Any:  # pragma: no cover - never iterated
        yield 1

    with pytest.raises(TypeError, match="generator"):
        Pipeline(RetryPolicy())(numbers)


# -- Pipeline(a, b)(fn) is a(b(fn)) ------------------------------------------------------------


def _policies(clock: VirtualClock, log: list[str]) -> list[Policy]:
    return [
        Recorder("outer", log),
        Fallback(value="fallback", on=(CircuitOpenError, BulkheadFullError)),
        RetryPolicy(attempts=3, on=ConnectionError, backoff=Backoff.constant(1), clock=clock),
        CircuitBreaker("same", window=4, minimum_calls=2, open_for=5, clock=clock),
        Bulkhead(1),
        Recorder("inner", log),
    ]


def _run_sync(nested: bool, outcomes: list[bool]) -> tuple[list[object], list[str], float]:
    clock = VirtualClock()
    log: list[str] = []
    policies = _policies(clock, log)
    script = iter(outcomes)

    def call() -> str:
        log.append("call")
        if next(script, True):
            return "ok"
        raise ConnectionError("down")

    if nested:
        wrapped = call
        for policy in reversed(policies):
            wrapped = policy(wrapped)
    else:
        wrapped = Pipeline(*policies)(call)
    results: list[object] = []
    for _ in range(4):
        try:
            results.append(wrapped())
        except ConnectionError as exc:
            results.append(type(exc))
        clock.advance(2)
    return results, log, clock.monotonic()


@settings(max_examples=60, deadline=None)
@given(outcomes=st.lists(st.booleans(), max_size=12))
def test_property_pipeline_behaves_exactly_like_nesting_sync(outcomes: list[bool]) -> None:
    assert _run_sync(False, outcomes) == _run_sync(True, outcomes)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=30, deadline=None)
@given(outcomes=st.lists(st.booleans(), max_size=12))
def test_property_pipeline_behaves_exactly_like_nesting_async(
    backend: str, outcomes: list[bool]
) -> None:
    async def run(nested: bool) -> tuple[list[object], list[str], float]:
        clock = VirtualClock()
        log: list[str] = []
        policies = [Timeout(100, clock=clock), *_policies(clock, log)]
        script = iter(outcomes)

        async def call() -> str:
            log.append("call")
            await clock.asleep(0.25)
            if next(script, True):
                return "ok"
            raise ConnectionError("down")

        if nested:
            wrapped = call
            for policy in reversed(policies):
                wrapped = policy(wrapped)
        else:
            wrapped = Pipeline(*policies)(call)
        results: list[object] = []
        for _ in range(4):
            try:
                results.append(await wrapped())
            except ConnectionError as exc:
                results.append(type(exc))
            clock.advance(2)
        return results, log, clock.monotonic()

    async def both() -> None:
        assert await run(False) == await run(True)

    anyio.run(both, backend=backend)


# -- a typical pipeline under injected faults -------------------------------------------------


@pytest.mark.anyio
async def test_typical_pipeline_under_chaos() -> None:
    clock = VirtualClock()
    failing = False
    chaos = ChaosFault(ConnectionError("injected"), schedule=lambda n: failing or n <= 2)
    latency = ChaosLatency(60, enabled=False, clock=clock)
    breaker = CircuitBreaker(
        "inventory", window=4, minimum_calls=4, half_open_calls=3, open_for=30, clock=clock
    )
    bulkhead = Bulkhead(2)
    retry = RetryPolicy(attempts=3, on=ConnectionError, backoff=Backoff.constant(1), clock=clock)
    fallback_errors: list[str] = []

    def cached(exc: BaseException | None) -> str:
        fallback_errors.append(type(exc).__name__)
        return "cached"

    resilient = Pipeline(
        Fallback(handler=cached, on=(CircuitOpenError, BulkheadFullError, TimeoutExceededError)),
        Timeout(10, clock=clock),
        retry,
        breaker,
        bulkhead,
        latency,
        chaos,
    )
    calls: list[float] = []

    @resilient
    async def stock(sku: str) -> str:
        calls.append(clock.monotonic())
        return f"live {sku}"

    # Two injected faults: the retry absorbs them.
    assert await stock("A-1") == "live A-1"
    assert clock.monotonic() == 2.0
    assert (chaos.injected, len(calls)) == (2, 1)
    assert breaker.state is CircuitState.CLOSED

    # A persistent outage: the fourth outcome opens the breaker; the retry's next attempt
    # is rejected, and the fallback serves the cached answer.
    failing = True
    assert await stock("A-1") == "cached"
    assert breaker.state is CircuitState.OPEN
    assert fallback_errors == ["CircuitOpenError"]
    assert chaos.injected == 3
    assert await stock("A-1") == "cached"  # rejected at once: no call, no wait
    assert chaos.injected == 3

    # Recovery: after the open interval three probes close the breaker.
    failing = False
    clock.advance(30)
    for _ in range(3):
        assert await stock("B-2") == "live B-2"
    assert breaker.state is CircuitState.CLOSED

    # A slow dependency: the Timeout cuts it at 10 s and the fallback answers.
    latency.enabled = True
    before = clock.monotonic()
    assert await stock("C-3") == "cached"
    assert clock.monotonic() == before + 10
    assert fallback_errors[-1] == "TimeoutExceededError"
    assert (bulkhead.active, bulkhead.waiting) == (0, 0)


def test_pipeline_repr_shows_its_policies() -> None:
    pipeline = Pipeline(Timeout(1, name="t"), Bulkhead(2, name="b"))
    assert repr(pipeline) == (
        "Pipeline(Timeout(1.0, name='t'), Bulkhead(name='b', max_concurrent=2, max_waiting=0))"
    )
