"""MemoryProjectionStore: the versions of `Projection` read models, in memory."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from resilience_kit.messaging._projection import Update

__all__ = ("MemoryProjectionStore",)


class _Version:
    __slots__ = ("applied", "rows")

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}
        self.applied: set[str] = set()


class MemoryProjectionStore:
    """A `ProjectionStore` in memory: for tests and single-process tools.

    Values are stored as JSON text, as the SQLite store keeps them: a value must be
    JSON (a tuple reads back as a list), and changing a value read changes nothing
    stored.

    Examples:
        >>> import anyio
        >>> store = MemoryProjectionStore()
        >>> async def main():
        ...     version = await store.create("counts")
        ...     await store.activate("counts", version)
        ...     await store.apply("counts", version, "e1", ["a"], lambda rows: {"a": 1})
        ...     return await store.active("counts"), await store.get("counts", version, "a")
        >>> anyio.run(main)
        (1, 1)
    """

    def __init__(self) -> None:
        self._versions: dict[str, dict[int, _Version]] = {}
        self._active: dict[str, int] = {}
        self._last: dict[str, int] = {}
        self._logs: dict[str, list[tuple[str, bytes]]] = {}
        self._logged: dict[str, set[str]] = {}

    def __repr__(self) -> str:
        return f"MemoryProjectionStore({len(self._versions)} projections)"

    def _version(self, name: str, version: int) -> _Version:
        try:
            return self._versions[name][version]
        except KeyError:
            raise LookupError(f"projection {name!r} has no version {version}") from None

    async def active(self, name: str) -> int | None:
        """The active version of ``name``, or None."""
        return self._active.get(name)

    async def versions(self, name: str) -> list[int]:
        """Every version of ``name``, in order."""
        return sorted(self._versions.get(name, {}))

    async def create(self, name: str) -> int:
        """A new, empty, inactive version, numbered after every earlier one."""
        number = self._last.get(name, 0) + 1
        self._last[name] = number
        self._versions.setdefault(name, {})[number] = _Version()
        return number

    async def activate(self, name: str, version: int) -> None:
        """Make ``version`` active (raises `LookupError` if it does not exist)."""
        self._version(name, version)
        self._active[name] = version

    async def clear(self, name: str, version: int) -> None:
        """Delete the rows and applied event ids of ``version``."""
        found = self._version(name, version)
        found.rows.clear()
        found.applied.clear()

    async def drop(self, name: str, version: int) -> None:
        """Delete ``version``; dropping the active version leaves none active."""
        self._versions.get(name, {}).pop(version, None)
        if self._active.get(name) == version:
            del self._active[name]

    async def apply(
        self,
        name: str,
        version: int,
        event_id: str,
        keys: Sequence[str],
        update: Update,
        *,
        record: bytes | None = None,
    ) -> bool:
        """Apply one event to ``version`` (and log ``record``); False if applied before."""
        found = self._version(name, version)
        if event_id in found.applied:
            return False
        current = {key: json.loads(found.rows[key]) for key in keys if key in found.rows}
        # Encoded before anything is written: a fold or a value that fails changes nothing.
        changes = {key: _encode(value) for key, value in update(current).items()}
        for key, text in changes.items():
            if text is None:
                found.rows.pop(key, None)
            else:
                found.rows[key] = text
        found.applied.add(event_id)
        logged = self._logged.setdefault(name, set())
        if record is not None and event_id not in logged:
            logged.add(event_id)
            self._logs.setdefault(name, []).append((event_id, bytes(record)))
        return True

    async def read_log(self, name: str, *, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` log entries after position ``after`` (positions from 1)."""
        entries = self._logs.get(name, [])[after : after + limit]
        return [(after + number, data) for number, (_, data) in enumerate(entries, start=1)]

    async def get(self, name: str, version: int, key: str) -> Any | None:
        """The value of one row, or None."""
        text = self._version(name, version).rows.get(key)
        return None if text is None else json.loads(text)

    async def snapshot(self, name: str, version: int) -> tuple[dict[str, Any], frozenset[str]]:
        """Every row of ``version`` and the ids of the events applied to it."""
        found = self._version(name, version)
        rows = {key: json.loads(text) for key, text in found.rows.items()}
        return rows, frozenset(found.applied)


def _encode(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, allow_nan=False)
