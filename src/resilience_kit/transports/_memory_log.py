"""The bookkeeping of `MemoryBus`: one log per topic, a cursor and in-flight set per group.

A topic is an append-only log of messages numbered by offset. A consumer group keeps:

- ``next``: the first offset it has never handed out;
- ``waiting``: offsets to hand out before ``next`` (given back by a closed member, or
  skipped because another member holds their key), sorted;
- ``in_flight``: offsets handed to a member and not acknowledged yet;
- ``owners``: which member holds each key with messages in flight.

A member takes the lowest offset whose key no other member holds, so a key's messages
are in flight at one member at a time and reach it in order. A message is acknowledged
once it is in none of those sets, below ``next``; the topic drops the messages every
group has acknowledged. Pure bookkeeping: only `Group.wait` awaits.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass

import anyio

__all__ = ("Group", "Message", "Ticket", "Topic")


@dataclass(frozen=True, slots=True)
class Message:
    """One published message."""

    offset: int
    data: bytes
    key: str | None


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a `Delivery` carries for `ack`: the group and the offset."""

    group: Group
    offset: int


class Topic:
    """A topic's retained messages, by offset, and its consumer groups."""

    __slots__ = ("base", "end", "groups", "log", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.log: dict[int, Message] = {}
        self.base = 0  # the oldest retained offset
        self.end = 0  # the next offset to publish
        self.groups: dict[str, Group] = {}

    def append(self, data: bytes, key: str | None) -> None:
        """Publish a message and wake the groups' waiting members."""
        self.log[self.end] = Message(self.end, data, key)
        self.end += 1
        for group in self.groups.values():
            group.notify()

    def group(self, name: str) -> Group:
        """The group ``name``, created at the oldest retained message if new."""
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = Group(self, name)
        return group

    def trim(self) -> None:
        """Drop the messages every group has acknowledged (all kept while none exists)."""
        if not self.groups:
            return
        low = min(group.low() for group in self.groups.values())
        for offset in range(self.base, low):
            del self.log[offset]
        self.base = max(self.base, low)


class Group:
    """One consumer group's progress through a topic."""

    __slots__ = (
        "_in_flight_heap",
        "_waiters",
        "attempts",
        "in_flight",
        "name",
        "next",
        "owners",
        "topic",
        "waiting",
    )

    def __init__(self, topic: Topic, name: str) -> None:
        self.topic = topic
        self.name = name
        self.next = topic.base
        self.waiting: list[int] = []
        self.in_flight: dict[int, object] = {}  # offset -> the member holding it
        self._in_flight_heap: list[int] = []  # lazily pruned: entries not in in_flight are stale
        self.owners: dict[str, tuple[object, int]] = {}  # key -> (member, messages in flight)
        self.attempts: dict[int, int] = {}  # offset -> deliveries so far (unacked messages)
        self._waiters: set[anyio.Event] = set()

    @property
    def backlog(self) -> int:
        """Messages the group has not acknowledged yet (in flight, waiting or unread)."""
        return self.topic.end - self.next + len(self.waiting) + len(self.in_flight)

    def low(self) -> int:
        """The oldest offset the group has not acknowledged (``next`` if none)."""
        heap = self._in_flight_heap
        while heap and heap[0] not in self.in_flight:
            heapq.heappop(heap)
        low = self.next
        if heap:
            low = min(low, heap[0])
        if self.waiting:
            low = min(low, self.waiting[0])
        return low

    def _free_for(self, key: str | None, member: object) -> bool:
        if key is None:
            return True
        owner = self.owners.get(key)
        return owner is None or owner[0] is member

    def take(self, member: object) -> tuple[Message, int] | None:
        """Hand ``member`` the next message it may have, with its attempt number."""
        log = self.topic.log
        waiting = self.waiting
        for index, offset in enumerate(waiting):
            message = log[offset]
            if self._free_for(message.key, member):
                del waiting[index]
                return message, self._hand(message, member)
        while self.next < self.topic.end:
            message = log[self.next]
            self.next += 1
            if self._free_for(message.key, member):
                return message, self._hand(message, member)
            waiting.append(message.offset)  # below ``next``, above every other waiting one
        return None

    def _hand(self, message: Message, member: object) -> int:
        offset = message.offset
        attempt = self.attempts.get(offset, 0) + 1
        self.attempts[offset] = attempt
        self.in_flight[offset] = member
        heapq.heappush(self._in_flight_heap, offset)
        if message.key is not None:
            owner = self.owners.get(message.key)
            self.owners[message.key] = (member, 1 if owner is None else owner[1] + 1)
        return attempt

    def _disown(self, offset: int) -> None:
        key = self.topic.log[offset].key
        if key is None:
            return
        holder, count = self.owners[key]
        if count == 1:
            del self.owners[key]
        else:
            self.owners[key] = (holder, count - 1)

    def ack(self, offset: int) -> None:
        """Acknowledge ``offset`` (whichever member holds it); repeats change nothing."""
        member = self.in_flight.pop(offset, None)
        if member is not None:
            self._disown(offset)
        else:
            index = bisect.bisect_left(self.waiting, offset)
            if index == len(self.waiting) or self.waiting[index] != offset:
                return  # acknowledged already
            del self.waiting[index]
        self.attempts.pop(offset, None)
        self.topic.trim()
        self.notify()

    def release(self, member: object) -> int:
        """Give back what ``member`` holds, to be delivered again; return how many."""
        offsets = [offset for offset, holder in self.in_flight.items() if holder is member]
        for offset in offsets:
            del self.in_flight[offset]
            self._disown(offset)
            bisect.insort(self.waiting, offset)
        self.notify()
        return len(offsets)

    def notify(self) -> None:
        """Wake every member waiting in `wait`."""
        for event in self._waiters:
            event.set()
        self._waiters.clear()

    async def wait(self) -> None:
        """Wait until something changes: a publish, an ack, a release or a close."""
        event = anyio.Event()
        self._waiters.add(event)
        try:
            await event.wait()
        finally:
            self._waiters.discard(event)
