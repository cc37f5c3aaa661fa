"""`Outbox`: write events in the caller's own database transaction."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from resilience_kit._checks import check_topic
from resilience_kit.errors import ConfigurationError, EventTooLargeError
from resilience_kit.messaging._event import DEFAULT_MAX_BYTES, Event, _check_max_bytes
from resilience_kit.messaging._protocols import OutboxEntry, OutboxStore

__all__ = ("Outbox",)


class Outbox:
    """Adds events to an outbox table inside the transaction that changes your data.

    The event is written with the same connection, in the same transaction, as the
    business change it describes: both commit, or neither does. An `OutboxRelay`
    publishes committed rows afterwards, at least once, in order per event key. Nothing
    is published for a transaction that rolled back, and nothing committed is lost if
    the process dies right after the commit.

    Args:
        store: the outbox of a backend (``SQLiteStore(...).outbox``,
            ``PostgresStore(...).outbox``, ``MemoryStore().outbox``).
        topic: the topic used when `add` is not given one.
        max_bytes: the largest event JSON accepted; larger events raise
            `EventTooLargeError` and nothing is written.

    Raises:
        ConfigurationError: ``topic`` or ``max_bytes`` is invalid.

    Examples:
        >>> from resilience_kit.messaging import Event, Outbox
        >>> from resilience_kit.stores.memory import MemoryStore
        >>> store = MemoryStore()
        >>> outbox = Outbox(store.outbox, topic="orgs")
        >>> with store.transaction() as transaction:  # a sqlite3/psycopg connection in real code
        ...     outbox.add(transaction, Event(type="org.created", key="org:1", payload={}))
        >>> import anyio
        >>> anyio.run(store.outbox.status).pending
        1
    """

    __slots__ = ("_max_bytes", "_store", "_topic")

    def __init__(
        self,
        store: OutboxStore,
        *,
        topic: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if not isinstance(store, OutboxStore):
            raise ConfigurationError(
                "store", f"must implement OutboxStore (a backend's .outbox), got {store!r}"
            )
        self._store = store
        self._topic = None if topic is None else check_topic(topic)
        self._max_bytes = _check_max_bytes(max_bytes)

    def __repr__(self) -> str:
        return f"Outbox({self._store!r}, topic={self._topic!r})"

    @property
    def store(self) -> OutboxStore:
        """The outbox store rows are written to."""
        return self._store

    def _entry(self, event: Event, topic: str | None) -> OutboxEntry:
        # The exact type first: pydantic's isinstance check is slower than the INSERT's
        # own Python side (and an INSERT is what this is measured against).
        if type(event) is not Event and not isinstance(event, Event):
            raise TypeError(f"Outbox.add takes an Event, got {type(event).__name__}")
        if topic is None:
            topic = self._topic
            if topic is None:
                raise ConfigurationError(
                    "topic", "give topic= to Outbox.add, or a default topic to Outbox"
                )
        else:
            topic = check_topic(topic)
        if type(event) is Event:  # its own encoder, with the size check of to_json
            data = event.__pydantic_serializer__.to_json(event)
            if len(data) > self._max_bytes:
                raise EventTooLargeError(size=len(data), max_bytes=self._max_bytes)
        else:  # a subclass may encode itself
            data = event.to_json(max_bytes=self._max_bytes)
        return OutboxEntry(topic, event.key, event.id, event.type, data)

    def add(self, connection: Any, event: Event, *, topic: str | None = None) -> None:
        """Write ``event`` in the transaction open on ``connection``; never commits.

        Args:
            connection: the connection your transaction runs on: a `sqlite3.Connection`
                for SQLite, a `psycopg.Connection` for PostgreSQL, a
                `MemoryStore.transaction` for the in-memory store.
            event: the event.
            topic: where the relay will publish it (default: the outbox's topic).

        Raises:
            EventTooLargeError: the event's JSON is larger than ``max_bytes``.
            ConfigurationError: no topic, or an invalid one.
            TypeError: ``event`` is not an `Event`.

        Examples:
            >>> import sqlite3
            >>> from resilience_kit.messaging import Event, Outbox
            >>> from resilience_kit.stores.memory import MemoryStore
            >>> store = MemoryStore()
            >>> with store.transaction() as transaction:
            ...     event = Event(type="org.created", key="org:1", payload={})
            ...     Outbox(store.outbox).add(transaction, event, topic="orgs")
        """
        self._store.add(connection, (self._entry(event, topic),))

    def add_many(
        self, connection: Any, events: Iterable[Event], *, topic: str | None = None
    ) -> None:
        """Write several events in one statement, in order, in the open transaction.

        Every event is checked and encoded before anything is written.

        Examples:
            >>> from resilience_kit.messaging import Event, Outbox
            >>> from resilience_kit.stores.memory import MemoryStore
            >>> store = MemoryStore()
            >>> events = [Event(type="org.renamed", key="org:1", payload={}) for _ in range(3)]
            >>> with store.transaction() as transaction:
            ...     Outbox(store.outbox, topic="orgs").add_many(transaction, events)
        """
        entries = [self._entry(event, topic) for event in events]
        if entries:
            self._store.add(connection, entries)

    async def aadd(self, connection: Any, event: Event, *, topic: str | None = None) -> None:
        """`add` for an async connection (a `psycopg.AsyncConnection`, asyncio only).

        With ``connection=None`` the store writes and commits in a transaction of its
        own: for services whose data is not in the outbox's database (the event is then
        not atomic with any other write).

        Examples:
            >>> import anyio
            >>> from resilience_kit.messaging import Event, Outbox
            >>> from resilience_kit.stores.memory import MemoryStore
            >>> store = MemoryStore()
            >>> event = Event(type="org.created", key="org:1", payload={})
            >>> anyio.run(lambda: Outbox(store.outbox, topic="orgs").aadd(None, event))
        """
        await self._store.aadd(connection, (self._entry(event, topic),))

    async def publish(self, topic: str, event: Event) -> None:
        """Add ``event`` in a transaction of the store's own: an `Outbox` is a `Publisher`.

        So dead letters can be replayed through the outbox (and its relay), and code
        that publishes can be pointed at an outbox in tests.

        Examples:
            >>> import anyio
            >>> from resilience_kit.messaging import Event, Outbox
            >>> from resilience_kit.stores.memory import MemoryStore
            >>> store = MemoryStore()
            >>> event = Event(type="org.created", key="org:1", payload={})
            >>> anyio.run(Outbox(store.outbox).publish, "orgs", event)
            >>> anyio.run(store.outbox.status).pending
            1
        """
        await self.aadd(None, event, topic=topic)
