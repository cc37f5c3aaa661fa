"""A transaction for the in-memory store: writes apply on commit and vanish on rollback."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ("MemoryTransaction",)


class MemoryTransaction:
    """What `MemoryStore.transaction` yields: pass it where a database connection goes.

    Outbox rows added through it appear only when the transaction commits; inbox marks
    are reserved at once and released if it rolls back — like rows and row locks in a
    database.

    Examples:
        >>> transaction = MemoryTransaction()
        >>> done = []
        >>> transaction.on_commit(lambda: done.append("row"))
        >>> transaction.commit()
        >>> done
        ['row']
    """

    def __init__(self) -> None:
        self._commit: list[Callable[[], object]] = []
        self._rollback: list[Callable[[], object]] = []
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"MemoryTransaction({state}, {len(self._commit)} pending writes)"

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this transaction has already committed or rolled back")

    def on_commit(self, action: Callable[[], object]) -> None:
        """Run ``action`` when the transaction commits."""
        self._check_open()
        self._commit.append(action)

    def on_rollback(self, action: Callable[[], object]) -> None:
        """Run ``action`` if the transaction rolls back."""
        self._check_open()
        self._rollback.append(action)

    def commit(self) -> None:
        """Apply every write."""
        self._check_open()
        self.closed = True
        for action in self._commit:
            action()

    def rollback(self) -> None:
        """Discard every write and release every reservation."""
        self._check_open()
        self.closed = True
        for action in reversed(self._rollback):
            action()
