"""An Event's round trip through JSON, and what happens to bytes that are not an event.

The Organization service publishes `org.member_removed`; the bytes travel through an
outbox and a broker; the Notification service decodes them - or, for a poison message,
gets one typed error to dead-letter it with.

    python examples/messaging/event.py
"""

from __future__ import annotations

from datetime import datetime, timezone

from resilience_kit.messaging import Event, EventTooLargeError, InvalidEventError

event = Event(
    type="org.member_removed",
    key="org:acme",
    payload={"org": "acme", "user": "ann", "removed_by": "bob", "seats_left": 41},
    headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    occurred_at=datetime(2026, 1, 1, 9, 30, tzinfo=timezone.utc),
)

print("== the producer encodes")
data = event.to_json()
print(f"  {len(data)} bytes: {data.decode()}")

print("\n== the consumer decodes")
back = Event.from_json(data)
print(f"  id {back.id} (UUIDv{back.id.version}), type {back.type}, key {back.key}")
print(f"  payload {back.payload}")
print(f"  identical to what was sent: {back == event}")
print(f"  re-encodes to the same bytes: {back.to_json() == data}")

print("\n== a tracing header added on the way keeps the id")
traced = back.with_headers({"x-request-id": "req-7"})
print(f"  headers {traced.headers}; same id: {traced.id == event.id}")

print("\n== what is not an event gets one typed error (a consumer dead-letters it)")
for label, message in [
    ("truncated JSON", data[:40]),
    ("garbage bytes", b"\xff\xfe\x00garbage"),
    ("missing id", data.replace(b'"id":"' + str(event.id).encode() + b'",', b"")),
    ("NaN in payload", data.replace(b'"seats_left":41', b'"seats_left":NaN')),
    ("oversized", b" " * 2_000_000),
]:
    try:
        Event.from_json(message)
    except EventTooLargeError as exc:
        print(f"  {label:15} -> {type(exc).__name__}: {exc.size} bytes > {exc.max_bytes}")
    except InvalidEventError as exc:
        print(f"  {label:15} -> {type(exc).__name__}: {'; '.join(exc.problems)}")

print("\n== and a payload JSON would change is refused when the event is built")
try:
    Event(type="org.member_removed", key="org:acme", payload={"roles": ("admin",)})
except InvalidEventError as exc:
    print(f"  {exc}")
