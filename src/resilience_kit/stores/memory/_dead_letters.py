"""Dead letters in memory: the reference implementation of `DeadLetterStore`."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from resilience_kit import _telemetry
from resilience_kit.errors import CorruptRecordError
from resilience_kit.messaging._integrity import DEAD_LETTER_FIELDS, read_dead_letter
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

    def _checked(self, letter: DeadLetter) -> DeadLetter:
        # The same rule as every backend's, though nothing here is decoded: a letter put
        # in memory with a bad field fails where a stored one would.
        fields = {name: getattr(letter, name) for name in DEAD_LETTER_FIELDS}
        return read_dead_letter(store=repr(self), record=letter.id, fields=fields)

    async def get(self, letter_id: UUID) -> DeadLetter | None:
        """The dead letter with this id, or ``None``.

        Raises:
            CorruptRecordError: the stored letter breaks the rules of a dead letter.
        """
        letter = self._letters.get(letter_id)
        return None if letter is None else self._checked(letter)

    def _matching(self, where: DeadLetterFilter) -> list[DeadLetter]:
        return sorted(
            (letter for letter in self._letters.values() if where.matches(letter)),
            key=lambda letter: letter.id,
        )

    async def list(
        self, where: DeadLetterFilter, *, limit: int = 100, after: UUID | None = None
    ) -> list[DeadLetter]:
        """Matching dead letters in id (time) order, after the ``after`` cursor.

        A corrupted letter is skipped (and logged), never raised.
        """
        found: list[DeadLetter] = []
        for letter in self._matching(where):
            if len(found) >= limit:
                break
            if after is not None and letter.id <= after:
                continue
            try:
                found.append(self._checked(letter))
            except CorruptRecordError as error:
                _telemetry.logger.warning("%s; skipping it in a listing", error)
        return found

    async def count(self, where: DeadLetterFilter) -> int:
        """How many dead letters match."""
        return len(self._matching(where))

    async def delete(self, letter_ids: Sequence[UUID]) -> int:
        """Delete these dead letters; return how many existed."""
        return sum(self._letters.pop(letter_id, None) is not None for letter_id in set(letter_ids))

    async def purge(self, where: DeadLetterFilter) -> int:
        """Delete every matching dead letter; return how many."""
        return await self.delete([letter.id for letter in self._matching(where)])
