"""Messaging reliability: the `Event` envelope that outboxes store and consumers decode.

Examples:
    >>> from resilience_kit.messaging import Event
    >>> event = Event(type="org.member_removed", key="org:acme", payload={"user": "ann"})
    >>> Event.from_json(event.to_json()) == event
    True
"""

from resilience_kit._exports import present_at_top_level
from resilience_kit.errors import EventTooLargeError as EventTooLargeError
from resilience_kit.errors import InvalidEventError as InvalidEventError
from resilience_kit.errors import MalformedEventError as MalformedEventError
from resilience_kit.messaging._event import Event as Event

__all__ = (
    "Event",
    "EventTooLargeError",
    "InvalidEventError",
    "MalformedEventError",
)

present_at_top_level(globals(), __all__)
