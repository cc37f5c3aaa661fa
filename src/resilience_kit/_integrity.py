"""Reading a stored record back: one rule per kind of field, every defect a `CorruptRecordError`.

Every store reads records back from something it does not control: a table an operator
can ``UPDATE``, a Redis key anyone sharing the prefix can ``SET``. The rules for each
kind of record (``messaging/_integrity.py`` for idempotency records, dead letters, outbox
rows and inbox records; `read_breaker_record` beside `BreakerRecord`; `read_cache_record`
beside `CacheRecord`) are written once, on `RecordReader`, so that every backend calls
the same function on what it read and four stores cannot disagree on what "corrupt"
means. A backend only turns its native row or value into a mapping of fields; whatever
is missing, of the wrong type or out of range becomes a `CorruptRecordError` naming the
store, the record and the field, never a `KeyError`, `TypeError` or `ValueError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from resilience_kit.errors import CorruptRecordError

__all__ = ("RecordReader", "corrupt_record")

_MISSING = object()


def corrupt_record(*, store: str, kind: str, record: object, problem: str) -> CorruptRecordError:
    """The error for a ``kind`` record named ``record`` in ``store`` that has ``problem``.

    Examples:
        >>> str(corrupt_record(store="db", kind="dead letter", record="42", problem="not JSON"))
        "db: the dead letter '42' cannot be read back (not JSON)"
    """
    name = str(record)
    return CorruptRecordError(
        f"{store}: the {kind} {name!r} cannot be read back ({problem})",
        store=store,
        record=name,
    )


def _aware(value: object) -> datetime:
    """The default reading of a stored time: an aware datetime, as drivers return them."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise TypeError("not a timezone-aware datetime")
    return value


class RecordReader:
    """Reads the fields of one stored record, raising `CorruptRecordError` on any defect.

    Args:
        store: the store, as its repr (goes into the error).
        kind: what the record is (``"dead letter"``, ``"idempotency record"``...).
        record: its name in the store: a key, a row id, a position.
        fields: the values as the backend read them, by field name.
        time: turns a stored time into an aware datetime (the backend's encoding:
            Unix microseconds, ISO 8601 text...); by default the value must already
            be one. Whatever it raises is reported as a corrupt field.

    Examples:
        >>> reader = RecordReader(store="db", kind="row", record=7, fields={"attempts": -1})
        >>> reader.count("attempts")
        Traceback (most recent call last):
        ...
        resilience_kit.errors.CorruptRecordError: db: the row '7' cannot be read back \
(attempts is -1, below 0)
    """

    __slots__ = ("_fields", "_time", "kind", "record", "store")

    def __init__(
        self,
        *,
        store: str,
        kind: str,
        record: object,
        fields: Mapping[str, object],
        time: Callable[[Any], datetime] | None = None,
    ) -> None:
        self.store = store
        self.kind = kind
        self.record = record
        self._fields = fields
        self._time = time or _aware

    def corrupt(self, problem: str) -> CorruptRecordError:
        """The error for this record with ``problem``."""
        return corrupt_record(store=self.store, kind=self.kind, record=self.record, problem=problem)

    def _get(self, name: str) -> object:
        value = self._fields.get(name, _MISSING)
        if value is _MISSING:
            raise self.corrupt(f"{name} is missing")
        return value

    def _wrong(self, name: str, value: object, wanted: str) -> CorruptRecordError:
        shown = repr(value)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        return self.corrupt(f"{name} is {shown}, not {wanted}")

    def text(self, name: str, *, empty: bool = True) -> str:
        """A text field (UTF-8 bytes are decoded); ``empty=False`` refuses ``""``."""
        value = self._fields.get(name, _MISSING)
        if type(value) is str and (empty or value):  # the usual case, checked at once
            return value
        value = self._get(name)
        if isinstance(value, (bytes, bytearray, memoryview)):
            try:
                value = bytes(value).decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                raise self.corrupt(f"{name} is not UTF-8 text") from None
        if not isinstance(value, str):
            raise self._wrong(name, value, "text")
        if not empty and not value:
            raise self.corrupt(f"{name} is empty")
        return value

    def optional_text(self, name: str) -> str | None:
        """A text field that may be ``None`` (or absent)."""
        if self._fields.get(name) is None:
            return None
        return self.text(name)

    def blob(self, name: str) -> bytes:
        """A bytes field (``bytes``, ``bytearray`` or ``memoryview``)."""
        value = self._get(name)
        if type(value) is bytes:
            return value
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise self._wrong(name, value, "bytes")
        return bytes(value)

    def optional_blob(self, name: str) -> bytes | None:
        """A bytes field that may be ``None`` (or absent)."""
        if self._fields.get(name) is None:
            return None
        return self.blob(name)

    def count(self, name: str, *, minimum: int = 0) -> int:
        """An integer field of at least ``minimum`` (a bool is not a count)."""
        value = self._get(name)
        if type(value) is not int:
            raise self._wrong(name, value, "an integer")
        if value < minimum:
            raise self.corrupt(f"{name} is {value}, below {minimum}")
        return value

    def number(self, name: str, *, finite: bool = False) -> float:
        """A real number field: never NaN; ``finite=True`` refuses infinities too."""
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._wrong(name, value, "a number")
        number = float(value)
        if math.isnan(number) or (finite and math.isinf(number)):
            raise self.corrupt(f"{name} is {number}, not a finite number")
        return number

    def optional_number(self, name: str, *, finite: bool = False) -> float | None:
        """A number field that may be ``None`` (or absent)."""
        if self._fields.get(name) is None:
            return None
        return self.number(name, finite=finite)

    def moment(self, name: str) -> datetime:
        """A time field, read by the backend's ``time`` function, as an aware UTC datetime."""
        value = self._get(name)
        try:
            moment = self._time(value)
            if moment.utcoffset() is None:
                raise TypeError("no UTC offset")  # noqa: TRY301 - one handler reports all
            return moment.astimezone(timezone.utc)
        except (TypeError, ValueError, OverflowError, OSError, AttributeError) as exc:
            raise self.corrupt(f"{name} is not a time ({exc})") from None

    def optional_moment(self, name: str) -> datetime | None:
        """A time field that may be ``None`` (or absent)."""
        if self._fields.get(name) is None:
            return None
        return self.moment(name)

    def uuid(self, name: str) -> UUID:
        """A UUID field: a `UUID`, its canonical text, or its 16 bytes."""
        value = self._get(name)
        if isinstance(value, UUID):
            return value
        try:
            if isinstance(value, str):
                return UUID(value)
            if isinstance(value, bytes) and len(value) == 16:
                return UUID(bytes=value)
        except ValueError:
            pass
        raise self._wrong(name, value, "a UUID")

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        """A text field holding one of ``choices``."""
        value = self.text(name)
        if value not in choices:
            raise self.corrupt(f"{name} is {value!r}, not one of {', '.join(choices)}")
        return value
