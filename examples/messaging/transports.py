"""Events through the in-memory bus: consumer groups, a crashed handler, a broker outage
and a poison message - and nothing lost.

The Organization service publishes membership events; Notification and Audit each
consume them as their own consumer group. Swap `MemoryBus()` for `RedisStreams(url=...)`
or `KafkaTransport(...)` and the code stays the same.

    python examples/messaging/transports.py
"""

from __future__ import annotations

import anyio

from resilience_kit.messaging import Event, InvalidEventError
from resilience_kit.transports import MemoryBus


def member_event(n: int, user: str) -> Event:
    return Event(type="org.member_added", key="org:acme", payload={"n": n, "user": user})


async def main() -> None:
    bus = MemoryBus()
    notifications = bus.subscribe("orgs", group="notifications", consumer="notify-1")
    audit = bus.subscribe("orgs", group="audit", consumer="audit-1")

    print("== the broker is down for two publishes; the publisher retries")
    bus.fail_next_publish(2, ConnectionError("broker unreachable"))
    for n, user in enumerate(["ann", "bob", "cem"]):
        for attempt in range(1, 10):
            try:
                await bus.publish("orgs", member_event(n, user))
                break
            except ConnectionError as exc:
                print(f"  publish {user!r}, attempt {attempt}: {exc}")
        print(f"  published {user!r}")

    print("\n== someone publishes bytes that are not an event (a poison message)")
    await bus.publish_raw("orgs", b"\xff\xfe garbage", key="org:acme")

    print("\n== notify-1 reads one message and crashes before acknowledging it")
    crashed = await anext(aiter(notifications))
    print(f"  took message {crashed.id} (attempt {crashed.attempt}), then died")
    await notifications.aclose()

    print("\n== notify-2 takes over the group: the message comes back first")
    sent: list[str] = []
    async with bus.subscribe("orgs", group="notifications", consumer="notify-2") as notify:
        for _ in range(4):
            delivery = await anext(aiter(notify))
            try:
                event = Event.from_json(delivery.data)
            except InvalidEventError as exc:
                print(f"  message {delivery.id}: poison ({type(exc).__name__}), dead-lettered")
            else:
                user = event.payload["user"]
                sent.append(user)
                print(f"  message {delivery.id} (attempt {delivery.attempt}): e-mail {user!r}")
            await notify.ack(delivery)

    print("\n== audit, another group, got every message too, in order")
    async with audit:
        users = []
        for _ in range(4):
            delivery = await anext(aiter(audit))
            if delivery.data.startswith(b"{"):
                users.append(Event.from_json(delivery.data).payload["user"])
            await audit.ack(delivery)
        print(f"  audit trail: {users}")

    print("\n== both groups acknowledged everything: the bus holds nothing")
    backlog = bus.backlog("orgs", "notifications")
    print(f"  retained: {bus.retained('orgs')}, notifications backlog: {backlog}")
    assert sent == users == ["ann", "bob", "cem"]


anyio.run(main)
