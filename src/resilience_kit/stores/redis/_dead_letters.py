"""Dead letters in Redis: one JSON value per letter, and an index sorted by id."""

from __future__ import annotations

import base64
import binascii
import builtins
import json
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any
from uuid import UUID

from resilience_kit import _telemetry
from resilience_kit._integrity import corrupt_record
from resilience_kit.errors import CorruptRecordError
from resilience_kit.messaging._integrity import read_dead_letter
from resilience_kit.messaging._records import DeadLetter, DeadLetterFilter

if TYPE_CHECKING:
    from resilience_kit.stores.redis._client import RedisIO

__all__ = ("RedisDeadLetterStore",)

# KEYS: the letter, the index. ARGV: the letter's JSON, its id. Idempotent on the id:
# a letter already stored is kept as it is (a letter never changes once written).
_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
redis.call('ZADD', KEYS[2], 0, ARGV[2])
return 1
"""

# KEYS: the index, then the letters. ARGV: their ids. Replies, per id: 'ok' and the
# value, 'wrongtype' and the key's type, or 'none' and '' (then the index entry, left
# by a key deleted or evicted behind the store's back, is removed: put writes the
# letter and its index entry in one script, so no put can be half done here).
_FETCH = """
local out = {}
for i = 2, #KEYS do
    local kind = redis.call('TYPE', KEYS[i])['ok']
    if kind == 'string' then
        table.insert(out, 'ok')
        table.insert(out, redis.call('GET', KEYS[i]))
    elseif kind == 'none' then
        redis.call('ZREM', KEYS[1], ARGV[i - 1])
        table.insert(out, 'none')
        table.insert(out, '')
    else
        table.insert(out, 'wrongtype')
        table.insert(out, kind)
    end
end
return out
"""

# KEYS: the index, then the letters. ARGV: their ids. Returns how many letters existed.
_DELETE = """
local deleted = 0
for i = 2, #KEYS do
    deleted = deleted + redis.call('DEL', KEYS[i])
    redis.call('ZREM', KEYS[1], ARGV[i - 1])
end
return deleted
"""

_PAGE = 500  # ids read, fetched or deleted per round trip
_VERSION = 1


def encode_letter(letter: DeadLetter) -> bytes:
    """The letter as JSON; its bytes in base64, its times in ISO 8601 with their offset."""
    return json.dumps(
        {
            "v": _VERSION,
            "id": str(letter.id),
            "source": letter.source,
            "topic": letter.topic,
            "data": base64.b64encode(letter.data).decode("ascii"),
            "error_type": letter.error_type,
            "error_message": letter.error_message,
            "traceback": letter.traceback,
            "attempts": letter.attempts,
            "first_failed_at": letter.first_failed_at.isoformat(),
            "last_failed_at": letter.last_failed_at.isoformat(),
            "dead_lettered_at": letter.dead_lettered_at.isoformat(),
            "key": letter.key,
            "replays": letter.replays,
        },
        separators=(",", ":"),
    ).encode("ascii")  # ensure_ascii: even lone surrogates in an error message survive


def decode_letter(letter_id: str, raw: bytes, *, store: str, record: str) -> DeadLetter:
    """The letter in ``raw``, stored under ``letter_id`` (``record`` names its key).

    Raises:
        CorruptRecordError: ``raw`` is not such a letter.
    """

    def corrupt(problem: str) -> CorruptRecordError:
        return corrupt_record(store=store, kind="dead letter", record=record, problem=problem)

    try:
        fields = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt(f"not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise corrupt("not a JSON object")
    if fields.get("v") != _VERSION:
        raise corrupt(f"unknown format version {fields.get('v')!r}")
    if fields.get("id") != letter_id:
        raise corrupt(f"the id inside is {fields.get('id')!r}")
    data = fields.get("data")
    if isinstance(data, str):  # base64 text; anything else is reported as it is
        try:
            fields["data"] = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise corrupt(f"data is not base64 ({exc})") from None
    return read_dead_letter(store=store, record=record, fields=fields, time=_moment)


def _moment(text: object) -> datetime:
    if not isinstance(text, str):
        raise TypeError("not ISO 8601 text")
    return datetime.fromisoformat(text)


class RedisDeadLetterStore:
    """A `DeadLetterStore` in Redis: a JSON value per letter, and an index sorted by id.

    Each letter is a string key (``<prefix>dl:<id>``) holding its JSON — the message's
    bytes in base64 — and never expires. The index (``<prefix>dl:index``) is a sorted
    set of the ids, all scored 0 so that Redis orders them by their text: the ids'
    order, which for UUIDv7 ids is the order of time. ``put`` writes both in one
    script, and so does ``delete``.

    ``list``, ``count`` and ``purge`` with a filter page through the index
    (``ZRANGEBYLEX`` from the cursor, 500 ids a round trip), fetch the letters and apply
    `DeadLetterFilter.matches` here: memory stays bounded however long the queue, and a
    filtered count or purge reads the whole queue (filtering by ``ids`` reads only
    those). ``count`` without a filter is ``ZCARD``; ``purge`` without one deletes every
    letter that was in the index when it began, in pages.

    A value that cannot be read back (not JSON, not a letter, another Redis type under
    the key) is `CorruptRecordError` from ``get``; ``list`` and filtered ``count`` and
    ``purge`` skip it with a warning in the ``resilience_kit`` log. It is never deleted
    except by ``delete`` of its id, or a ``purge`` of everything.

    Examples:
        <!-- not run: a fragment; needs a Redis server -->
        ```python
        await store.dead_letters.put(letter)
        page = await store.dead_letters.list(DeadLetterFilter(topic="orders"), limit=50)
        more = await store.dead_letters.list(DeadLetterFilter(topic="orders"), after=page[-1].id)
        ```
    """

    __slots__ = ("_delete", "_fetch", "_io", "_put")

    def __init__(self, io: RedisIO) -> None:
        self._io = io
        self._put = io.script(_PUT)
        self._fetch = io.script(_FETCH)
        self._delete = io.script(_DELETE)

    def __repr__(self) -> str:
        return f"{self._io.name}.dead_letters"

    @property
    def _index(self) -> str:
        return f"{self._io.prefix}dl:index"

    def _key(self, letter_id: str) -> str:
        return f"{self._io.prefix}dl:{letter_id}"

    async def put(self, letter: DeadLetter) -> None:
        """Store ``letter``; a letter with its id already stored is kept as it was.

        Raises:
            StoreUnavailableError: Redis cannot be reached; nothing was stored.
        """
        letter_id = str(letter.id)
        keys = [self._key(letter_id), self._index]
        args = [encode_letter(letter), letter_id]
        await self._io.run(lambda: self._put(keys=keys, args=args))

    async def get(self, letter_id: UUID) -> DeadLetter | None:
        """The dead letter with this id, or ``None``.

        Raises:
            CorruptRecordError: the stored value cannot be read back (it is left as it is).
            StoreUnavailableError: Redis cannot be reached.
        """
        text = str(letter_id)
        ((_, outcome),) = await self._io.run(lambda: self._fetch_sync([text]))
        if isinstance(outcome, CorruptRecordError):
            raise outcome
        return outcome

    async def list(
        self, where: DeadLetterFilter, *, limit: int = 100, after: UUID | None = None
    ) -> list[DeadLetter]:
        """Matching dead letters in id (time) order, after the ``after`` cursor.

        A corrupted letter is skipped and logged.

        Raises:
            StoreUnavailableError: Redis cannot be reached.
        """
        found: list[DeadLetter] = []
        if limit <= 0:
            return found
        size = min(limit, _PAGE) if where.matches_everything else _PAGE
        cursor = None if after is None else str(after)
        while True:
            letters, cursor = await self._page(where, cursor, size)
            found.extend(letters)
            if cursor is None or len(found) >= limit:
                return found[:limit]

    async def count(self, where: DeadLetterFilter) -> int:
        """How many dead letters match (without a filter, corrupted ones included).

        Raises:
            StoreUnavailableError: Redis cannot be reached.
        """
        if where.matches_everything:
            return int(await self._io.run(lambda: self._io.client.zcard(self._index)))
        total = 0
        cursor: str | None = None
        while True:
            letters, cursor = await self._page(where, cursor, _PAGE)
            total += len(letters)
            if cursor is None:
                return total

    async def delete(self, letter_ids: Sequence[UUID]) -> int:
        """Delete these dead letters (corrupted ones too); return how many existed.

        Raises:
            StoreUnavailableError: Redis cannot be reached; some pages may be deleted.
        """
        ids = list(dict.fromkeys(str(letter_id) for letter_id in letter_ids))
        deleted = 0
        for start in range(0, len(ids), _PAGE):
            page = ids[start : start + _PAGE]
            deleted += await self._io.run(partial(self._delete_sync, page))
        return deleted

    async def purge(self, where: DeadLetterFilter) -> int:
        """Delete every matching dead letter; return how many.

        Without a filter, every letter in the index when the purge began goes, corrupted
        ones too; with one, corrupted letters are skipped (they cannot be matched).

        Raises:
            StoreUnavailableError: Redis cannot be reached; some pages may be deleted.
        """
        if where.matches_everything:
            return await self._purge_all()
        deleted = 0
        cursor: str | None = None
        while True:
            letters, cursor = await self._page(where, cursor, _PAGE)
            if letters:
                deleted += await self.delete([letter.id for letter in letters])
            if cursor is None:
                return deleted

    # -- pages ----------------------------------------------------------------------------

    async def _page(
        self, where: DeadLetterFilter, cursor: str | None, size: int
    ) -> tuple[builtins.list[DeadLetter], str | None]:
        """The letters matching ``where`` among the next ``size`` ids after ``cursor``.

        Also returns the cursor of the page after (``None``: there is none).
        """
        if where.ids is not None:
            wanted = sorted({str(letter_id) for letter_id in where.ids})
            ids = [text for text in wanted if cursor is None or text > cursor][:size]
            outcomes = await self._io.run(lambda: self._fetch_sync(ids))
        else:
            ids, outcomes = await self._io.run(lambda: self._scan_sync(cursor, size))
        letters: builtins.list[DeadLetter] = []
        for _, outcome in outcomes:
            if isinstance(outcome, DeadLetter):
                if where.matches(outcome):
                    letters.append(outcome)
            elif outcome is not None:
                _telemetry.logger.warning("%s; skipping it", outcome)
        return letters, (ids[-1] if len(ids) == size else None)

    async def _purge_all(self) -> int:
        last = await self._io.run(partial(self._range_sync, b"+", b"-", 1, reverse=True))
        if not last:
            return 0
        bound = b"[" + last[0]
        deleted = 0
        cursor = b"-"
        while True:
            ids = await self._io.run(partial(self._range_sync, cursor, bound, _PAGE))
            if ids:
                page = [letter_id.decode() for letter_id in ids]
                deleted += await self._io.run(partial(self._delete_sync, page))
            if len(ids) < _PAGE:
                return deleted
            cursor = b"(" + ids[-1]

    # -- Redis I/O (on worker threads) ----------------------------------------------------

    def _range_sync(
        self, start: bytes, stop: bytes, count: int, *, reverse: bool = False
    ) -> builtins.list[bytes]:
        """Up to ``count`` ids of the index from ``start`` to ``stop`` (ZRANGEBYLEX syntax)."""
        client = self._io.client
        found: Any  # bytes: the store refuses clients that decode responses
        if reverse:
            found = client.zrevrangebylex(self._index, start, stop, start=0, num=count)
        else:
            found = client.zrangebylex(self._index, start, stop, start=0, num=count)
        return list(found)

    def _scan_sync(
        self, cursor: str | None, size: int
    ) -> tuple[builtins.list[str], builtins.list[Any]]:
        start = b"-" if cursor is None else b"(" + cursor.encode()
        ids = [letter_id.decode() for letter_id in self._range_sync(start, b"+", size)]
        return ids, self._fetch_sync(ids)

    def _fetch_sync(
        self, ids: builtins.list[str]
    ) -> builtins.list[tuple[str, DeadLetter | CorruptRecordError | None]]:
        """Each id with its letter, ``None`` (absent) or why it is unreadable."""
        if not ids:
            return []
        reply = self._fetch(keys=[self._index, *map(self._key, ids)], args=ids)
        outcomes: builtins.list[tuple[str, DeadLetter | CorruptRecordError | None]] = []
        for position, letter_id in enumerate(ids):
            status, value = reply[2 * position], reply[2 * position + 1]
            key = self._key(letter_id)
            if status == b"none":
                outcomes.append((letter_id, None))
            elif status == b"wrongtype":
                problem = f"the key holds a {value.decode()}, not a string"
                outcomes.append(
                    (
                        letter_id,
                        corrupt_record(
                            store=self._io.name, kind="dead letter", record=key, problem=problem
                        ),
                    )
                )
            else:
                try:
                    letter = decode_letter(letter_id, value, store=self._io.name, record=key)
                except CorruptRecordError as exc:
                    outcomes.append((letter_id, exc))
                else:
                    outcomes.append((letter_id, letter))
        return outcomes

    def _delete_sync(self, ids: builtins.list[str]) -> int:
        return int(self._delete(keys=[self._index, *map(self._key, ids)], args=ids))
