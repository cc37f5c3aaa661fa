from __future__ import annotations

import copy
import pickle

import pytest

import resilience_kit
from resilience_kit import errors
from resilience_kit.errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigurationError,
    InjectedFaultError,
    ResilienceError,
    RetryExhaustedError,
    TimeoutExceededError,
    TransportError,
    TransportUnavailableError,
)

EXAMPLES: list[ResilienceError] = [
    ConfigurationError("attempts", "must be >= 1, got 0"),
    RetryExhaustedError(attempts=3, last_result={"status": "pending"}),
    CircuitOpenError("billing", state="open", retry_after=12.5),
    CircuitOpenError("billing", state="forced_open", retry_after=None),
    TimeoutExceededError("db", seconds=2.0),
    BulkheadFullError("db", max_concurrent=10, max_waiting=5),
    InjectedFaultError("chaos"),
    TransportError("Kafka refused it", transport="KafkaTransport('k:9092')"),
    TransportUnavailableError("no broker answered", transport="KafkaTransport('k:9092')"),
]


def test_hierarchy() -> None:
    for cls in (
        ConfigurationError,
        RetryExhaustedError,
        CircuitOpenError,
        TimeoutExceededError,
        BulkheadFullError,
        InjectedFaultError,
    ):
        assert issubclass(cls, ResilienceError)
    assert issubclass(ResilienceError, Exception)
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(TimeoutExceededError, TimeoutError)
    # Only the documented extra bases: a breaker rejection is not a ValueError, etc.
    assert not issubclass(CircuitOpenError, (ValueError, TimeoutError))
    assert not issubclass(BulkheadFullError, (ValueError, TimeoutError))
    assert not issubclass(RetryExhaustedError, (ValueError, TimeoutError))


def test_every_public_error_is_in_errors_and_the_top_level_keeps_the_caught_ones() -> None:
    top_level_errors = {
        name
        for name in resilience_kit.__all__
        if isinstance(value := getattr(resilience_kit, name), type)
        and issubclass(value, BaseException)
    }
    assert len(top_level_errors) == 13
    for name in top_level_errors:
        assert getattr(resilience_kit, name) is getattr(errors, name)
    assert set(errors.__all__) == {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_each_error_is_raised_and_caught_as_resilience_error(error: ResilienceError) -> None:
    with pytest.raises(ResilienceError) as info:
        raise error
    assert info.value is error


def test_configuration_error() -> None:
    err = ConfigurationError("attempts", "must be >= 1, got 0")
    assert err.parameter == "attempts"
    assert str(err) == "attempts: must be >= 1, got 0"
    with pytest.raises(ValueError, match="attempts"):
        raise err


def test_retry_exhausted_error() -> None:
    result = {"status": "pending"}
    err = RetryExhaustedError(attempts=3, last_result=result)
    assert err.attempts == 3
    assert err.last_result is result
    assert str(err) == "gave up after 3 attempt(s); the last result was {'status': 'pending'}"


def test_circuit_open_error() -> None:
    err = CircuitOpenError("billing", state="open", retry_after=12.5)
    assert (err.name, err.state, err.retry_after) == ("billing", "open", 12.5)
    assert str(err) == "circuit 'billing' is open; next probe in 12.500s"
    forced = CircuitOpenError("billing", state="forced_open", retry_after=None)
    assert forced.retry_after is None
    assert str(forced) == "circuit 'billing' is forced_open"


def test_timeout_exceeded_error() -> None:
    err = TimeoutExceededError("db", seconds=2.0)
    assert (err.name, err.seconds) == ("db", 2.0)
    assert str(err) == "'db' timed out after 2.0s"
    with pytest.raises(TimeoutError):
        raise err


def test_bulkhead_full_error() -> None:
    err = BulkheadFullError("db", max_concurrent=10, max_waiting=5)
    assert (err.name, err.max_concurrent, err.max_waiting) == ("db", 10, 5)
    assert str(err) == "bulkhead 'db' is full (10 running, 5 waiting)"


def test_injected_fault_error() -> None:
    assert str(InjectedFaultError("chaos")) == "chaos"
    assert InjectedFaultError().args == ()


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize(
    "duplicate",
    [copy.copy, copy.deepcopy, lambda e: pickle.loads(pickle.dumps(e))],
    ids=["copy", "deepcopy", "pickle"],
)
def test_errors_survive_copy_and_pickle(error: ResilienceError, duplicate: object) -> None:
    # Keyword-only constructors used to break copy.copy (and so ChaosFault(instance)).
    clone = duplicate(error)  # type: ignore[operator]
    assert type(clone) is type(error)
    assert clone is not error
    assert str(clone) == str(error)
    assert clone.args == error.args
    assert vars(clone) == vars(error)
    assert clone.__traceback__ is None


def test_copy_does_not_carry_the_traceback() -> None:
    try:
        raise CircuitOpenError("billing", state="open", retry_after=1.0)
    except CircuitOpenError as exc:
        caught = exc
    assert caught.__traceback__ is not None
    assert copy.copy(caught).__traceback__ is None
