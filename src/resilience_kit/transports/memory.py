"""The in-memory bus: topics and consumer groups inside one process, on asyncio or trio.

For tests, examples and single-process services. It behaves like a broker with consumer
groups — every group gets every message, each message goes to one member of a group,
unacknowledged messages come back — and it can be told to fail, so that the code around
a real broker can be tested without one. Nothing survives the process.

Examples:
    >>> import anyio
    >>> from resilience_kit.messaging import Event
    >>> from resilience_kit.transports.memory import MemoryBus
    >>> async def main() -> None:
    ...     bus = MemoryBus()
    ...     await bus.publish("orgs", Event(type="org.created", key="org:acme", payload={}))
    ...     async with bus.subscribe("orgs", group="billing") as orgs:
    ...         async for delivery in orgs:
    ...             print(Event.from_json(delivery.data).type, delivery.attempt)
    ...             await orgs.ack(delivery)
    ...             break
    >>> anyio.run(main)
    org.created 1
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable

from anyio.lowlevel import checkpoint

from resilience_kit._checks import check_int, check_name, check_topic
from resilience_kit.errors import ConfigurationError, InjectedFaultError
from resilience_kit.messaging._event import Event
from resilience_kit.messaging._protocols import Delivery
from resilience_kit.policies import Policy
from resilience_kit.testing import ChaosFault
from resilience_kit.transports._checks import check_data, check_event, check_key
from resilience_kit.transports._closing import Closing
from resilience_kit.transports._memory_log import Group, Ticket, Topic

__all__ = ("MemoryBus", "MemorySubscriber")

_consumer_numbers = itertools.count(1)

FaultSpec = BaseException | type[BaseException] | Callable[[], BaseException]


class MemoryBus(Closing):
    """An in-process message broker with consumer groups, for tests and single processes.

    **Groups.** `subscribe` joins a consumer group; the group is created by its first
    subscription and then lasts as long as the bus. Every group receives every message
    of the topic, starting from the oldest message the bus still holds (so messages
    published before the first subscription are delivered too); within a group, each
    message goes to one member.

    **Order.** A topic is one log, in publish order. Messages with the same key are in
    flight at one member of a group at a time: a member is never handed a message
    whose key another member holds unacknowledged, so a key's messages are handled in
    order even with several members (different keys go to members in parallel).
    Raw messages without a key have no such constraint.

    **Redelivery.** A message stays unacknowledged until `MemorySubscriber.ack`. When a
    subscriber closes, what it holds unacknowledged goes back to its group and is
    delivered again — to another member, or to the group's next subscriber — with
    `Delivery.attempt` one higher, before later messages of the same key.

    **Memory.** `publish` never blocks and never refuses for lack of room: there is no
    bound. A message is dropped once every group of its topic has acknowledged it;
    a topic that has no group yet keeps everything published to it, and a group that
    stops consuming keeps its backlog — as a broker would, but in this process's memory.

    **Faults.** `fail_next_publish` makes the next publishes raise (optionally after the
    message was stored, as when a broker's acknowledgement is lost); ``faults`` wraps
    every publish in a policy such as `resilience_kit.testing.ChaosFault`. `publish_raw`
    publishes arbitrary bytes, to feed consumers a poison message.

    The bus belongs to the event loop that uses it (asyncio or trio); it is not
    thread-safe.

    Args:
        faults: a policy every publish runs through, to inject failures or latency
            (`ChaosFault`, `ChaosLatency`); ``None`` for none.

    Raises:
        ConfigurationError: ``faults`` is not a policy.

    Examples:
        >>> import anyio
        >>> from resilience_kit.messaging import Event
        >>> async def main() -> None:
        ...     bus = MemoryBus()
        ...     billing = bus.subscribe("orgs", group="billing")
        ...     audit = bus.subscribe("orgs", group="audit")
        ...     await bus.publish("orgs", Event(type="org.created", key="org:1", payload={}))
        ...     for subscriber in (billing, audit):  # every group gets every message
        ...         delivery = await anext(aiter(subscriber))
        ...         await subscriber.ack(delivery)
        ...         print(subscriber.group, Event.from_json(delivery.data).key)
        ...     print(bus.retained("orgs"))  # acknowledged by every group: dropped
        ...     await bus.aclose()
        >>> anyio.run(main)
        billing org:1
        audit org:1
        0
    """

    __slots__ = ("_closed", "_failures", "_faults", "_subscribers", "_topics")

    def __init__(self, *, faults: Policy | None = None) -> None:
        if faults is not None and not isinstance(faults, Policy):
            raise ConfigurationError(
                "faults", f"must be a policy such as ChaosFault, got {faults!r}"
            )
        self._faults = faults
        self._failures: deque[tuple[ChaosFault, int, bool]] = deque()
        self._topics: dict[str, Topic] = {}
        self._subscribers: set[MemorySubscriber] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryBus({len(self._topics)} topics)"

    async def publish(self, topic: str, event: Event) -> None:
        """Publish ``event`` to ``topic``, as its JSON (`Event.to_json`).

        Raises:
            EventTooLargeError: the event's JSON is larger than 1 MiB.
            InjectedFaultError: or what `fail_next_publish` or ``faults`` injects.
            RuntimeError: the bus is closed.

        Examples:
            >>> import anyio
            >>> from resilience_kit.messaging import Event
            >>> bus = MemoryBus()
            >>> event = Event(type="org.created", key="org:1", payload={})
            >>> anyio.run(bus.publish, "orgs", event)
            >>> bus.retained("orgs")
            1
        """
        name = check_topic(topic)
        event = check_event(event)
        await self._append(name, event.to_json(), event.key)

    async def publish_raw(self, topic: str, data: bytes, *, key: str | None = None) -> None:
        r"""Publish ``data`` as it is: bytes that need not be an event (a poison message).

        Raises:
            TypeError: ``data`` is not bytes.
            ConfigurationError: ``key`` is not a valid key.
            InjectedFaultError: or what `fail_next_publish` or ``faults`` injects.
            RuntimeError: the bus is closed.

        Examples:
            >>> import anyio
            >>> async def main() -> None:
            ...     bus = MemoryBus()
            ...     await bus.publish_raw("orgs", b"\xff not json", key="org:1")
            ...     async with bus.subscribe("orgs", group="billing") as orgs:
            ...         delivery = await anext(aiter(orgs))
            ...         print(delivery.data, delivery.key)
            >>> anyio.run(main)
            b'\xff not json' org:1
        """
        name = check_topic(topic)
        await self._append(name, check_data(data), check_key(key))

    def subscribe(self, topic: str, *, group: str, consumer: str | None = None) -> MemorySubscriber:
        """Join consumer group ``group`` of ``topic`` (creating the group if new).

        Args:
            topic: the topic.
            group: the consumer group; each group receives every message.
            consumer: this member's name, for reprs (default: ``"consumer-N"``).

        Raises:
            ConfigurationError: a name is empty, too long or not a string.
            RuntimeError: the bus is closed.

        Examples:
            >>> bus = MemoryBus()
            >>> bus.subscribe("orgs", group="billing", consumer="billing-1")
            MemorySubscriber(topic='orgs', group='billing', consumer='billing-1')
        """
        name = check_topic(topic)
        group_name = check_name("group", group)
        consumer_name = (
            f"consumer-{next(_consumer_numbers)}"
            if consumer is None
            else check_name("consumer", consumer)
        )
        self._check_open()
        subscriber = MemorySubscriber(self, self._topic(name).group(group_name), consumer_name)
        self._subscribers.add(subscriber)
        return subscriber

    def fail_next_publish(
        self, count: int = 1, exception: FaultSpec = InjectedFaultError, *, stored: bool = False
    ) -> None:
        """Make the next ``count`` publishes raise ``exception``.

        Calls queue up: ``fail_next_publish(1, A)`` then ``fail_next_publish(1, B)``
        fails the next publish with ``A`` and the one after with ``B``.

        Args:
            count: how many publishes fail, from the next one.
            exception: an exception type, an instance (copied each time) or a factory.
            stored: store the message before raising, as when a broker took the message
                but its acknowledgement was lost: the publisher sees a failure, retries,
                and consumers get the message twice.

        Raises:
            ConfigurationError: ``count`` is not an int >= 1, or ``exception`` is not
                an exception.

        Examples:
            >>> import anyio
            >>> from resilience_kit.messaging import Event
            >>> bus = MemoryBus()
            >>> bus.fail_next_publish(1, ConnectionError("broker down"))
            >>> event = Event(type="org.created", key="org:1", payload={})
            >>> anyio.run(bus.publish, "orgs", event)
            Traceback (most recent call last):
            ...
            ConnectionError: broker down
            >>> anyio.run(bus.publish, "orgs", event)  # the next one goes through
            >>> bus.retained("orgs")
            1
        """
        check_int("count", count, minimum=1)
        fault = ChaosFault(exception, schedule=[True] * count, name="MemoryBus.fail_next_publish")
        self._failures.append((fault, count, bool(stored)))

    def retained(self, topic: str) -> int:
        """How many messages of ``topic`` the bus holds (not yet acknowledged by every group).

        Examples:
            >>> MemoryBus().retained("orgs")
            0
        """
        found = self._topics.get(check_topic(topic))
        return 0 if found is None else len(found.log)

    def backlog(self, topic: str, group: str) -> int:
        """How many messages of ``topic`` the group has not acknowledged yet.

        Raises:
            LookupError: the group has never subscribed to the topic.

        Examples:
            >>> import anyio
            >>> from resilience_kit.messaging import Event
            >>> bus = MemoryBus()
            >>> subscriber = bus.subscribe("orgs", group="billing")
            >>> anyio.run(bus.publish, "orgs", Event(type="org.created", key="o", payload={}))
            >>> bus.backlog("orgs", "billing")
            1
        """
        return self._group(topic, group).backlog

    async def join(self, topic: str, group: str) -> None:
        """Wait until the group has acknowledged every message of ``topic``.

        For tests: publish, let the consumers run, ``await bus.join(...)``, then check
        their effects — no sleeping.

        Raises:
            LookupError: the group has never subscribed to the topic.

        Examples:
            >>> import anyio
            >>> from resilience_kit.messaging import Event
            >>> async def main() -> None:
            ...     bus = MemoryBus()
            ...     seen = []
            ...     async def consume() -> None:
            ...         async with bus.subscribe("orgs", group="audit") as orgs:
            ...             async for delivery in orgs:
            ...                 seen.append(Event.from_json(delivery.data).key)
            ...                 await orgs.ack(delivery)
            ...     async with anyio.create_task_group() as tasks:
            ...         tasks.start_soon(consume)
            ...         for key in ("org:1", "org:2"):
            ...             event = Event(type="org.created", key=key, payload={})
            ...             await bus.publish("orgs", event)
            ...         await bus.join("orgs", "audit")
            ...         tasks.cancel_scope.cancel()
            ...     print(seen)
            >>> anyio.run(main)
            ['org:1', 'org:2']
        """
        found = self._group(topic, group)
        while found.backlog:
            await found.wait()

    async def aclose(self) -> None:
        """Close every subscription (their iteration ends) and refuse new work.

        Unacknowledged messages go back to their groups, as with
        `MemorySubscriber.aclose`. Closing twice is fine.

        Examples:
            >>> import anyio
            >>> async def main() -> None:
            ...     async with MemoryBus() as bus:
            ...         subscriber = bus.subscribe("orgs", group="billing")
            ...     print([delivery async for delivery in subscriber])  # closed: ends at once
            >>> anyio.run(main)
            []
        """
        self._closed = True
        for subscriber in list(self._subscribers):
            await subscriber.aclose()

    # -- internals ---------------------------------------------------------------------

    def _topic(self, name: str) -> Topic:
        found = self._topics.get(name)
        if found is None:
            found = self._topics[name] = Topic(name)
        return found

    def _group(self, topic: str, group: str) -> Group:
        found = self._topics.get(check_topic(topic))
        if found is None or group not in found.groups:
            raise LookupError(f"group {group!r} has never subscribed to topic {topic!r}")
        return found.groups[group]

    async def _append(self, topic: str, data: bytes, key: str | None) -> None:
        self._check_open()
        await checkpoint()  # a publishing loop must let consumers run
        failures = self._failures
        while failures and failures[0][0].injected >= failures[0][1]:
            failures.popleft()
        if failures:
            fault, _, stored = failures[0]
            if stored:
                await self._store(topic, data, key)
            await fault.acall(self._store, topic, data, key)  # raises: its schedule says so
        elif self._faults is not None:
            await self._faults.acall(self._store, topic, data, key)
        else:
            self._topic(topic).append(data, key)

    async def _store(self, topic: str, data: bytes, key: str | None) -> None:
        self._topic(topic).append(data, key)


class MemorySubscriber(Closing):
    """A member of a `MemoryBus` consumer group: iterate it for deliveries, ack each one.

    Get one from `MemoryBus.subscribe`. Iteration waits for messages until `aclose`
    (or leaving an ``async with`` block); breaking out of an ``async for`` does not
    close it. A message never acknowledged is delivered again once this subscriber
    closes. Any member of the group may acknowledge a delivery.

    Attributes:
        topic: the topic.
        group: the consumer group.
        consumer: this member's name.

    Examples:
        >>> import anyio
        >>> from resilience_kit.messaging import Event
        >>> async def main() -> None:
        ...     bus = MemoryBus()
        ...     await bus.publish("orgs", Event(type="org.created", key="org:1", payload={}))
        ...     first = bus.subscribe("orgs", group="billing")
        ...     delivery = await anext(aiter(first))
        ...     await first.aclose()  # without acknowledging: the message comes back
        ...     async with bus.subscribe("orgs", group="billing") as second:
        ...         again = await anext(aiter(second))
        ...         await second.ack(again)
        ...     print(again.id == delivery.id, again.attempt)
        >>> anyio.run(main)
        True 2
    """

    __slots__ = ("_bus", "_closed", "_group", "consumer", "group", "topic")

    def __init__(self, bus: MemoryBus, group: Group, consumer: str) -> None:
        self._bus = bus
        self._group = group
        self._closed = False
        self.topic = group.topic.name
        self.group = group.name
        self.consumer = consumer

    def __repr__(self) -> str:
        return (
            f"MemorySubscriber(topic={self.topic!r}, group={self.group!r}, "
            f"consumer={self.consumer!r})"
        )

    def __aiter__(self) -> MemorySubscriber:
        return self

    async def __anext__(self) -> Delivery:
        await checkpoint()  # a consuming loop must let other tasks run
        group = self._group
        while True:
            if self._closed:
                raise StopAsyncIteration
            taken = group.take(self)
            if taken is not None:
                message, attempt = taken
                return Delivery(
                    topic=self.topic,
                    data=message.data,
                    id=str(message.offset),
                    key=message.key,
                    attempt=attempt,
                    handle=Ticket(group, message.offset),
                )
            await group.wait()

    async def ack(self, delivery: Delivery) -> None:
        """Acknowledge ``delivery``: its group will not see it again.

        Acknowledging twice changes nothing. Acknowledging after `aclose` still works
        while the message has not been delivered again.

        Raises:
            ValueError: ``delivery`` came from another topic or group.

        Examples:
            >>> import anyio
            >>> async def main() -> None:
            ...     bus = MemoryBus()
            ...     await bus.publish_raw("orgs", b"{}")
            ...     async with bus.subscribe("orgs", group="billing") as orgs:
            ...         await orgs.ack(await anext(aiter(orgs)))
            ...     print(bus.backlog("orgs", "billing"))
            >>> anyio.run(main)
            0
        """
        ticket = delivery.handle
        if not isinstance(ticket, Ticket) or ticket.group is not self._group:
            raise ValueError(f"{self!r} cannot acknowledge a delivery from another topic or group")
        self._group.ack(ticket.offset)

    async def aclose(self) -> None:
        """Stop iterating; what this member holds unacknowledged goes back to its group.

        A task waiting in ``async for`` on this subscriber stops too. Closing twice is
        fine.

        Examples:
            >>> import anyio
            >>> async def main() -> None:
            ...     bus = MemoryBus()
            ...     await bus.publish_raw("orgs", b"{}")
            ...     subscriber = bus.subscribe("orgs", group="billing")
            ...     await anext(aiter(subscriber))
            ...     await subscriber.aclose()
            ...     print(bus.backlog("orgs", "billing"))  # given back, still to handle
            >>> anyio.run(main)
            1
        """
        if self._closed:
            return
        self._closed = True
        self._bus._subscribers.discard(self)
        self._group.release(self)
