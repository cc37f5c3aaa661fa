from __future__ import annotations

import inspect

import anyio
import pytest

from resilience_kit import (
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    Fallback,
    Pipeline,
)
from resilience_kit.testing import VirtualClock

# -- value and handler ---------------------------------------------------------------------


def test_sync_value_replaces_a_matching_exception() -> None:
    @Fallback(value=[], on=ConnectionError)
    def recommendations(user: str) -> list[str]:
        raise ConnectionError(user)

    assert recommendations("ann") == []


def test_the_real_result_passes_through() -> None:
    @Fallback(value="stale")
    def fresh(x: int) -> str:
        return f"fresh {x}"

    assert fresh(1) == "fresh 1"


def test_none_is_a_valid_value() -> None:
    @Fallback(None)
    def broken() -> str:
        raise RuntimeError

    assert broken() is None


def test_sync_handler_receives_the_exception() -> None:
    seen: list[BaseException | None] = []
    error = ConnectionError("down")

    def handler(exc: BaseException | None) -> str:
        seen.append(exc)
        return "substitute"

    @Fallback(handler=handler)
    def broken() -> str:
        raise error

    assert broken() == "substitute"
    assert seen == [error]


def test_a_handler_that_raises_propagates_its_exception() -> None:
    def handler(exc: BaseException | None) -> str:
        raise LookupError("no substitute either")

    @Fallback(handler=handler)
    def broken() -> str:
        raise ConnectionError("down")

    with pytest.raises(LookupError) as info:
        broken()
    assert isinstance(info.value.__context__, ConnectionError)


@pytest.mark.anyio
async def test_async_value_and_async_handler() -> None:
    error = TimeoutError("slow")
    seen: list[BaseException | None] = []

    async def handler(exc: BaseException | None) -> str:
        seen.append(exc)
        await anyio.lowlevel.checkpoint()
        return "from cache"

    @Fallback(handler=handler, on=TimeoutError)
    async def slow() -> str:
        raise error

    @Fallback(value="default")
    async def broken() -> str:
        raise KeyError("x")

    @Fallback(value="default")
    async def fine() -> str:
        return "real"

    assert await slow() == "from cache"
    assert seen == [error]
    assert await broken() == "default"
    assert await fine() == "real"


@pytest.mark.anyio
async def test_sync_handler_guards_an_async_function() -> None:
    @Fallback(handler=lambda exc: f"handled {type(exc).__name__}")
    async def broken() -> str:
        raise ValueError

    assert await broken() == "handled ValueError"


# -- what falls back -------------------------------------------------------------------------


def test_on_filters_by_type_and_other_exceptions_propagate_unchanged() -> None:
    fallback = Fallback(value=0, on=(ConnectionError, TimeoutError))
    raised: list[BaseException] = [ConnectionError(), TimeoutError(), ValueError("bad input")]

    @fallback
    def call(i: int) -> int:
        raise raised[i]

    assert call(0) == 0
    assert call(1) == 0
    with pytest.raises(ValueError, match="bad input") as info:
        call(2)
    assert info.value is raised[2]


@pytest.mark.anyio
async def test_on_accepts_a_predicate() -> None:
    @Fallback(value="cached", on=lambda exc: "retryable" in str(exc))
    async def call(message: str) -> str:
        raise RuntimeError(message)

    assert await call("retryable glitch") == "cached"
    with pytest.raises(RuntimeError, match="fatal"):
        await call("fatal")


def test_on_result_replaces_a_bad_result_and_the_handler_gets_none() -> None:
    seen: list[BaseException | None] = []

    def handler(exc: BaseException | None) -> dict[str, str]:
        seen.append(exc)
        return {"status": "unknown"}

    @Fallback(handler=handler, on_result=lambda r: r.get("status") == "error")
    def status(value: str) -> dict[str, str]:
        return {"status": value}

    assert status("ok") == {"status": "ok"}
    assert seen == []
    assert status("error") == {"status": "unknown"}
    assert seen == [None]


@pytest.mark.anyio
async def test_async_on_result() -> None:
    @Fallback(value=-1, on_result=lambda r: r < 0)
    async def measure(x: int) -> int:
        return x

    assert await measure(5) == 5
    assert await measure(-7) == -1


def test_circuit_open_error_falls_back_through_a_pipeline() -> None:
    clock = VirtualClock()
    breaker = CircuitBreaker("recs", window=2, minimum_calls=2, open_for=30, clock=clock)
    calls: list[int] = []

    @Pipeline(Fallback(value=["popular"], on=CircuitOpenError), breaker)
    def recommendations() -> list[str]:
        calls.append(1)
        raise ConnectionError("down")

    # While closed, the ConnectionError is not what this fallback covers.
    for _ in range(2):
        with pytest.raises(ConnectionError):
            recommendations()
    # The breaker opened: the rejection is served the fallback, the function is not called.
    assert recommendations() == ["popular"]
    assert len(calls) == 2


@pytest.mark.anyio
async def test_async_circuit_open_error_falls_back_through_a_pipeline() -> None:
    breaker = CircuitBreaker("recs-async", clock=VirtualClock())
    breaker.force_open()
    called: list[int] = []

    @Pipeline(Fallback(value="cached", on=CircuitOpenError), breaker)
    async def recommendations() -> str:  # pragma: no cover - never admitted
        called.append(1)
        return "live"

    assert await recommendations() == "cached"
    assert called == []


# -- never swallowed -----------------------------------------------------------------------


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize(
    "fallback",
    [Fallback(value="x"), Fallback(value="x", on=BaseException), Fallback("x", on=lambda e: True)],
    ids=["default", "on-BaseException", "predicate"],
)
def test_keyboard_interrupt_and_system_exit_are_never_swallowed(
    interrupt: type[BaseException], fallback: Fallback[str]
) -> None:
    @fallback
    def interrupted() -> str:
        raise interrupt

    with pytest.raises(interrupt):
        interrupted()


@pytest.mark.anyio
async def test_cancellation_is_never_swallowed() -> None:
    activations: list[BaseException | None] = []

    def handler(exc: BaseException | None) -> str:  # pragma: no cover - must not run
        activations.append(exc)
        return "substitute"

    @Fallback(handler=handler, on=BaseException)
    async def work() -> str:
        outer.cancel()
        await anyio.sleep_forever()
        return "never"  # pragma: no cover

    with anyio.CancelScope() as outer:
        await work()
    assert outer.cancelled_caught
    assert activations == []


# -- decoration and configuration ----------------------------------------------------------


def test_async_handler_on_a_sync_function_is_a_type_error_at_decoration() -> None:
    async def handler(exc: BaseException | None) -> str:  # pragma: no cover
        return "x"

    def sync() -> str:  # pragma: no cover
        return "y"

    fallback = Fallback(handler=handler)
    with pytest.raises(TypeError, match="async handler"):
        fallback(sync)
    with pytest.raises(TypeError, match="async handler"):
        Pipeline(fallback)(sync)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"value": 1, "handler": lambda exc: 2}],
    ids=["neither", "both"],
)
def test_exactly_one_of_value_and_handler(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="exactly one") as info:
        Fallback(**kwargs)  # type: ignore[arg-type]
    assert info.value.parameter == "value"


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"handler": "not callable"}, "handler"),
        ({"value": 1, "on_result": 3}, "on_result"),
        ({"value": 1, "on": "ConnectionError"}, "on"),
        ({"value": 1, "on": (ConnectionError, "x")}, "on"),
    ],
)
def test_bad_parameters_are_configuration_errors(kwargs: dict[str, object], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Fallback(**kwargs)  # type: ignore[arg-type]
    assert info.value.parameter == parameter


@pytest.mark.anyio
async def test_call_acall_metadata_and_repr() -> None:
    fallback = Fallback(value=0, name="zero")
    assert repr(fallback) == "Fallback(name='zero')"
    assert Fallback(value=0).name == "fallback"

    async def divide(a: int, b: int) -> float:
        """Divide."""
        return a / b

    wrapped = fallback(divide)
    assert inspect.iscoroutinefunction(wrapped)
    assert wrapped.__name__ == "divide"
    assert wrapped.__doc__ == "Divide."
    assert await wrapped(1, 0) == 0
    assert await fallback.acall(divide, 6, 3) == 2
    assert fallback.call(lambda: 1 / 0) == 0
