"""`RetryEvent` behaves as the frozen record it was as a dataclass: equality, hashing,
repr, pickling, pattern matching, and no assignment."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from resilience_kit.typing import RetryEvent


def event(attempt: int = 1, result: object = None) -> RetryEvent:
    return RetryEvent("orders", attempt, 0.5, 1.25, None, result)


def test_events_with_equal_fields_are_equal_and_hash_alike() -> None:
    assert event() == event()
    assert hash(event()) == hash(event())
    assert event(attempt=1) != event(attempt=2)
    assert event() != ("orders", 1, 0.5, 1.25, None, None)
    assert len({event(), event(), event(attempt=2)}) == 2


def test_an_event_shows_its_fields_in_order() -> None:
    error = ConnectionError("refused")
    assert repr(RetryEvent("orders", 2, 1.0, 0.0, error)) == (
        "RetryEvent(policy='orders', attempt=2, delay=1.0, elapsed=0.0, "
        "exception=ConnectionError('refused'), result=None)"
    )


def test_an_event_survives_a_pickle_round_trip() -> None:
    original = event(result="partial")
    copy = pickle.loads(pickle.dumps(original))
    assert copy == original
    assert copy.result == "partial"


def test_an_event_can_be_matched_positionally() -> None:
    match event(attempt=3):
        case RetryEvent(policy, attempt):
            assert (policy, attempt) == ("orders", 3)
        case _:  # pragma: no cover - the case above matches
            pytest.fail("no match")


def test_an_event_cannot_be_changed() -> None:
    record = event()
    with pytest.raises(dataclasses.FrozenInstanceError, match="'attempt'"):
        record.attempt = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError, match="'delay'"):
        del record.delay
    with pytest.raises(AttributeError):
        record.other = 1  # type: ignore[attr-defined]
    assert record == event()
