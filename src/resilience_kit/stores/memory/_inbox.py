"""Inbox records in memory: the reference implementation of `InboxStore`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

from resilience_kit.clock import Clock

if TYPE_CHECKING:
    from resilience_kit.stores.memory._transaction import MemoryTransaction

__all__ = ("MemoryInboxStore",)


class MemoryInboxStore:
    """Processed event ids per consumer, with the time each was recorded.

    ``mark`` inside a `MemoryStore.transaction` reserves the id at once (as a row lock
    would) and keeps it only if the transaction commits.

    Examples:
        >>> import anyio, uuid
        >>> from resilience_kit.testing import VirtualClock
        >>> inbox = MemoryInboxStore(VirtualClock())
        >>> event_id = uuid.uuid4()
        >>> anyio.run(inbox.record, "billing", event_id)
        True
        >>> anyio.run(inbox.record, "billing", event_id)
        False
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._seen: dict[tuple[str, UUID], float] = {}

    def __repr__(self) -> str:
        return f"MemoryInboxStore({len(self._seen)} records)"

    def _claim(self, consumer: str, event_id: UUID) -> bool:
        if (consumer, event_id) in self._seen:
            return False
        self._seen[consumer, event_id] = self._clock.time()
        return True

    def mark(self, connection: Any, consumer: str, event_id: UUID) -> bool:
        """Record the event inside ``connection``; True the first time.

        ``connection`` is a `MemoryTransaction`, or ``None`` for no transaction.
        """
        if not self._claim(consumer, event_id):
            return False
        transaction: MemoryTransaction | None = connection
        if transaction is not None:
            transaction.on_rollback(lambda: self._seen.pop((consumer, event_id), None))
        return True

    async def amark(self, connection: Any, consumer: str, event_id: UUID) -> bool:
        """`mark`, awaited."""
        return self.mark(connection, consumer, event_id)

    async def record(self, consumer: str, event_id: UUID) -> bool:
        """Record the event; True the first time, False for a duplicate."""
        return self._claim(consumer, event_id)

    async def contains(self, consumer: str, event_id: UUID) -> bool:
        """Whether the event was recorded for ``consumer``."""
        return (consumer, event_id) in self._seen

    async def forget(self, consumer: str, event_id: UUID) -> bool:
        """Remove the record; True if it existed."""
        return self._seen.pop((consumer, event_id), None) is not None

    async def purge(self, *, older_than: float) -> int:
        """Remove records older than ``older_than`` seconds; return how many."""
        cutoff = self._clock.time() - older_than
        old = [item for item, at in self._seen.items() if at <= cutoff]
        for item in old:
            del self._seen[item]
        return len(old)
