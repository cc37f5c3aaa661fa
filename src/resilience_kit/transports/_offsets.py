"""Which offsets of one Kafka partition may be committed, whatever order handlers ack in.

Kafka keeps one committed offset per partition and group: "everything before this is
done". Handlers running concurrently acknowledge out of order, so committing the offset
of each acknowledged record would skip a record still being handled, and a crash then
would lose it. `PartitionOffsets` commits only the contiguous prefix: the position is
always the smallest offset delivered and not yet acknowledged. Pure bookkeeping, no I/O.
"""

from __future__ import annotations

from collections import deque

__all__ = ("PartitionOffsets",)


class PartitionOffsets:
    """The delivered and acknowledged offsets of one partition, and the offset to commit.

    Offsets must be delivered in increasing order (gaps are fine: compacted topics and
    transaction markers leave some). `position` is what to commit: the smallest
    delivered offset not yet acknowledged, or one past the last delivered offset when
    every delivered one is acknowledged; ``None`` before the first delivery.

    Examples:
        >>> offsets = PartitionOffsets()
        >>> for offset in (5, 6, 8):
        ...     offsets.delivered(offset)
        >>> offsets.ack(6), offsets.position  # 5 is still being handled
        (False, 5)
        >>> offsets.ack(5), offsets.position  # 5 and 6 done: 8 is next
        (True, 8)
        >>> offsets.ack(8), offsets.position
        (True, 9)
    """

    __slots__ = ("_last", "_open", "_order", "committed")

    def __init__(self) -> None:
        self._order: deque[int] = deque()  # delivered, in order, from the oldest unacked
        self._open: set[int] = set()  # delivered and not acknowledged
        self._last: int | None = None
        self.committed: int | None = None
        """The last position committed, as recorded by `mark_committed`."""

    def __repr__(self) -> str:
        return f"PartitionOffsets(position={self.position}, pending={self.pending})"

    @property
    def last_delivered(self) -> int | None:
        """The highest offset delivered so far, or ``None``."""
        return self._last

    @property
    def pending(self) -> int:
        """How many delivered offsets are not acknowledged yet."""
        return len(self._open)

    @property
    def position(self) -> int | None:
        """The offset to commit: the smallest delivered offset not acknowledged yet.

        One past the last delivered offset when all are acknowledged; ``None`` before
        the first delivery.
        """
        if self._order:
            return self._order[0]
        return None if self._last is None else self._last + 1

    def delivered(self, offset: int) -> None:
        """Record that ``offset`` was handed to a handler.

        Raises:
            ValueError: ``offset`` is not higher than the last one delivered (the
                partition was rewound: track it with a new `PartitionOffsets`).
        """
        if self._last is not None and offset <= self._last:
            raise ValueError(f"offset {offset} delivered after {self._last}: offsets must increase")
        self._last = offset
        self._order.append(offset)
        self._open.add(offset)

    def ack(self, offset: int) -> bool:
        """Record that ``offset`` was handled; True if `position` moved forward.

        Acknowledging an offset twice, or one never delivered, changes nothing.
        """
        if offset not in self._open:
            return False
        self._open.discard(offset)
        order = self._order
        if order[0] != offset:
            return False  # an earlier offset is still being handled
        while order and order[0] not in self._open:
            order.popleft()
        return True

    def mark_committed(self, position: int) -> None:
        """Record that ``position`` was committed (so it is not committed again)."""
        self.committed = position

    def needs_commit(self) -> bool:
        """Whether `position` is past the last position committed."""
        position = self.position
        return position is not None and (self.committed is None or position > self.committed)
