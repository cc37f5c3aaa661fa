"""Dead letters in memory: the reference implementation of `DeadLetterStore`."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from resilience_kit.messaging._records import DeadLetter, DeadLetterFilter

__all__ = ("MemoryDeadLetterStore",)


class MemoryDeadLetterStore:
    """Dead letters in a dict, for tests and single-process tools.

    Examples:
        >>> import anyio
        >>> store = MemoryDeadLetterStore()
        >>> letter = DeadLetter.create(
        ...     source="outbox", topic="orgs", data=b"not json", error=ValueError("x"), attempts=1
        ... )
        >>> anyio.run(store.put, letter)
        >>> anyio.run(store.count, DeadLetterFilter(topic="orgs"))
        1
    """

    def __init__(self) -> None:
        self._letters: dict[UUID, DeadLetter] = {}

    def __repr__(self) -> str:
        return f"MemoryDeadLetterStore({len(self._letters)} letters)"

    def put_now(self, letter: DeadLetter) -> None:
        """Store ``letter`` at once (the in-memory outbox moves rows here atomically)."""
        self._letters.setdefault(letter.id, letter)

    async def put(self, letter: DeadLetter) -> None:
        """Store ``letter`` (a second put of the same id changes nothing)."""
        self.put_now(letter)

    async def get(self, letter_id: UUID) -> DeadLetter | None:
        """The dead letter with this id, or ``None``."""
        return self._letters.get(letter_id)

    def _matching(self, where: DeadLetterFilter) -> list[DeadLetter]:
        return sorted(
            (letter for letter in self._letters.values() if where.matches(letter)),
            key=lambda letter: letter.id,
        )

    async def list(
        self, where: DeadLetterFilter, *, limit: int = 100, after: UUID | None = None
    ) -> list[DeadLetter]:
        """Matching dead letters in id (time) order, after the ``after`` cursor."""
        found = [letter for letter in self._matching(where) if after is None or letter.id > after]
        return found[:limit]

    async def count(self, where: DeadLetterFilter) -> int:
        """How many dead letters match."""
        return len(self._matching(where))

    async def delete(self, letter_ids: Sequence[UUID]) -> int:
        """Delete these dead letters; return how many existed."""
        return sum(self._letters.pop(letter_id, None) is not None for letter_id in set(letter_ids))

    async def purge(self, where: DeadLetterFilter) -> int:
        """Delete every matching dead letter; return how many."""
        return await self.delete([letter.id for letter in self._matching(where)])
