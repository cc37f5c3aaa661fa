"""`Inbox`: each event's effects happen once per consumer, by event id."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from resilience_kit._checks import check_name
from resilience_kit.errors import ConfigurationError
from resilience_kit.messaging._event import Event
from resilience_kit.messaging._protocols import InboxStore

__all__ = ("Inbox",)


def _event_id(event: Event | UUID) -> UUID:
    if isinstance(event, Event):
        return event.id
    if isinstance(event, UUID):
        return event
    raise TypeError(f"expected an Event or its UUID, got {type(event).__name__}")


class Inbox:
    """Remembers which events a consumer has processed, so a redelivery changes nothing.

    Delivery is at least once; the inbox makes the *effects* exactly once. Where the
    consumer's own data lives in the store's database, call `mark` inside the same
    transaction as the consumer's writes: the mark and the writes commit together, so
    a crash can neither lose the effect nor apply it twice. Elsewhere, `record` after
    the work (at-least-once effects, duplicates skipped) — or claim first with
    `record` and `forget` on failure, when acting twice is worse than not acting.

    Args:
        store: a backend's inbox (``store.inbox``).
        consumer: whose inbox this is; consumers de-duplicate independently.

    Examples:
        >>> from resilience_kit.messaging import Event, Inbox
        >>> from resilience_kit.stores.memory import MemoryStore
        >>> store = MemoryStore()
        >>> inbox = Inbox(store.inbox, consumer="billing")
        >>> event = Event(type="org.created", key="org:1", payload={})
        >>> with store.transaction() as transaction:  # your sqlite3/psycopg transaction
        ...     inbox.mark(transaction, event)  # then write your effects on it
        True
        >>> with store.transaction() as transaction:
        ...     inbox.mark(transaction, event)  # a redelivery: skip the effects
        False
    """

    __slots__ = ("_store", "consumer")

    def __init__(self, store: InboxStore, *, consumer: str) -> None:
        if not isinstance(store, InboxStore):
            raise ConfigurationError(
                "store", f"must implement InboxStore (a backend's .inbox), got {store!r}"
            )
        self._store = store
        self.consumer = check_name("consumer", consumer)

    def __repr__(self) -> str:
        return f"Inbox({self._store!r}, consumer={self.consumer!r})"

    @property
    def store(self) -> InboxStore:
        """The inbox store behind this inbox."""
        return self._store

    def mark(self, connection: Any, event: Event | UUID) -> bool:
        """Mark the event processed inside the transaction open on ``connection``.

        Returns True the first time: do the work, in the same transaction. False means
        a duplicate: skip it. Never commits.
        """
        return self._store.mark(connection, self.consumer, _event_id(event))

    async def amark(self, connection: Any, event: Event | UUID) -> bool:
        """`mark` for an async connection (a `psycopg.AsyncConnection`, asyncio only)."""
        return await self._store.amark(connection, self.consumer, _event_id(event))

    async def record(self, event: Event | UUID) -> bool:
        """Mark the event processed in a transaction of the store's own; True the first time.

        Examples:
            >>> import anyio
            >>> from resilience_kit.messaging import Event, Inbox
            >>> from resilience_kit.stores.memory import MemoryStore
            >>> inbox = Inbox(MemoryStore().inbox, consumer="audit")
            >>> event = Event(type="org.created", key="org:1", payload={})
            >>> anyio.run(inbox.record, event), anyio.run(inbox.seen, event)
            (True, True)
        """
        return await self._store.record(self.consumer, _event_id(event))

    async def seen(self, event: Event | UUID) -> bool:
        """Whether the event was already processed by this consumer."""
        return await self._store.contains(self.consumer, _event_id(event))

    async def forget(self, event: Event | UUID) -> bool:
        """Forget the event, so that a replay of it is processed again."""
        return await self._store.forget(self.consumer, _event_id(event))

    async def purge(self, *, older_than: float) -> int:
        """Drop records older than ``older_than`` seconds; return how many.

        Keep them longer than any redelivery can take: the broker's retention, the
        outbox's retention.
        """
        if isinstance(older_than, bool) or not isinstance(older_than, (int, float)):
            raise ConfigurationError("older_than", f"must be a number, got {older_than!r}")
        return await self._store.purge(older_than=float(older_than))
