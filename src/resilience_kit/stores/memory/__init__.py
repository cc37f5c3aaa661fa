"""The in-memory backend: every messaging store, in one process, on an injectable clock.

For tests, examples and single-process tools. Nothing survives the process; use
`resilience_kit.stores.sqlite.SQLiteStore` (the embedded default) or PostgreSQL to keep
messages across restarts. The in-memory stores that breakers and caches use by default,
`MemoryBreakerStore` and `MemoryCacheStore`, are here too.

Examples:
    >>> from resilience_kit.messaging import Event, Outbox
    >>> from resilience_kit.stores.memory import MemoryStore
    >>> store = MemoryStore()
    >>> outbox = Outbox(store.outbox, topic="orgs")
    >>> with store.transaction() as transaction:
    ...     outbox.add(transaction, Event(type="org.created", key="org:1", payload={}))
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from resilience_kit.caching import MemoryCacheStore as MemoryCacheStore
from resilience_kit.clock import Clock, resolve_clock
from resilience_kit.policies import MemoryBreakerStore as MemoryBreakerStore
from resilience_kit.stores.memory._dead_letters import MemoryDeadLetterStore
from resilience_kit.stores.memory._idempotency import MemoryIdempotencyStore
from resilience_kit.stores.memory._inbox import MemoryInboxStore
from resilience_kit.stores.memory._outbox import MemoryOutboxStore
from resilience_kit.stores.memory._projection import MemoryProjectionStore as MemoryProjectionStore
from resilience_kit.stores.memory._transaction import MemoryTransaction

__all__ = (
    "MemoryBreakerStore",
    "MemoryCacheStore",
    "MemoryIdempotencyStore",
    "MemoryProjectionStore",
    "MemoryStore",
    "MemoryTransaction",
)


class MemoryStore:
    """Outbox, dead letters, inbox and idempotency records in memory.

    Args:
        clock: the clock for leases, retry times and expiry (default: the system clock,
            or the one `resilience_kit.testing.use_clock` installed).

    Attributes:
        outbox: the `OutboxStore`.
        dead_letters: the `DeadLetterStore`.
        inbox: the `InboxStore`.
        idempotency: the `IdempotencyStore`.

    Examples:
        >>> from resilience_kit.testing import VirtualClock
        >>> store = MemoryStore(clock=VirtualClock())
        >>> with store.transaction() as transaction:
        ...     pass  # pass `transaction` where a database connection goes
        >>> store.outbox
        MemoryOutboxStore(0 rows)
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock = resolve_clock(clock)
        self.dead_letters = MemoryDeadLetterStore()
        self.outbox = MemoryOutboxStore(self.clock, self.dead_letters)
        self.inbox = MemoryInboxStore(self.clock)
        self.idempotency = MemoryIdempotencyStore(self.clock)

    def __repr__(self) -> str:
        return "MemoryStore()"

    @contextmanager
    def transaction(self) -> Iterator[MemoryTransaction]:
        """A transaction: its writes apply if the block ends normally, vanish if it raises."""
        transaction = MemoryTransaction()
        try:
            yield transaction
        except BaseException:
            transaction.rollback()
            raise
        transaction.commit()

    def migrate(self) -> None:
        """Nothing to create: present so that every backend can be set up the same way."""

    def close(self) -> None:
        """Nothing to release: present so that every backend can be closed the same way."""

    async def ping(self) -> None:
        """Answer at once: memory is always reachable (every backend has ``ping``).

        `resilience_kit.health.store_check` calls it.

        Examples:
            >>> import anyio
            >>> anyio.run(MemoryStore().ping)
        """
