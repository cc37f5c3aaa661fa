"""Argument checks every transport shares."""

from __future__ import annotations

from resilience_kit._checks import check_name
from resilience_kit.messaging._event import Event

__all__ = ("check_data", "check_event", "check_key")


def check_data(data: object) -> bytes:
    """Raw message bytes: `bytes`, or a `bytearray` / `memoryview` copied to bytes."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"data must be bytes, got {type(data).__name__}")


def check_key(key: object) -> str | None:
    """An optional ordering key for a raw message (the rules of a topic name)."""
    return None if key is None else check_name("key", key)


def check_event(event: object) -> Event:
    """``event``, if it is an `Event`."""
    if not isinstance(event, Event):
        raise TypeError(f"event must be an Event, got {type(event).__name__}")
    return event
