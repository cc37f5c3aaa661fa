"""The `Event` envelope: what the outbox stores, the relay publishes and consumers decode."""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from typing_extensions import Self

from resilience_kit._checks import CONTROL_OR_SURROGATE, NAME_MAX_LENGTH, name_problem
from resilience_kit.clock import get_clock
from resilience_kit.errors import (
    ConfigurationError,
    EventTooLargeError,
    InvalidEventError,
    MalformedEventError,
)

__all__ = ("Event",)

DEFAULT_MAX_BYTES = 1_048_576
"""1 MiB: about Kafka's default ``message.max.bytes``."""

_MAX_DEPTH = 64  # nesting of payload containers
_MAX_INT_BITS = 1024  # a 309-digit integer still converts to and from text everywhere

_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")
_HEADER_NAME = re.compile(r"[A-Za-z0-9._-]+")
_SURROGATE = re.compile("[\ud800-\udfff]")

_HINTS: dict[type, str] = {
    tuple: "use a list",
    set: "use a list",
    frozenset: "use a list",
    bytes: "decode it, or base64-encode it, to a str",
    bytearray: "decode it, or base64-encode it, to a str",
    datetime: "use an ISO 8601 str",
    UUID: "use a str",
}


class _Ids:
    """RFC 9562 UUIDv7 ids that increase strictly within a process.

    48 bits of Unix milliseconds, then a 42-bit counter (random at each new millisecond,
    incremented within one, which also carries the ids through a clock stepping back),
    then 32 random bits. Ids sort by creation time, which keeps database indexes compact.
    """

    def __init__(self, time_ns: Callable[[], int] = time.time_ns) -> None:
        self._time_ns = time_ns
        self.reset()

    def reset(self) -> None:
        """Forget the last id (a forked child must not continue its parent's sequence)."""
        self._lock = threading.Lock()
        self._ms = -1
        self._counter = 0

    def __call__(self) -> UUID:
        with self._lock:
            ms = self._time_ns() // 1_000_000
            if ms > self._ms:
                counter = int.from_bytes(os.urandom(6), "big") >> 7  # 41 bits: room to count
            else:
                ms = self._ms
                counter = self._counter + 1
                if counter >> 42:
                    ms += 1
                    counter = int.from_bytes(os.urandom(6), "big") >> 7
            self._ms, self._counter = ms, counter
        value = (
            (ms & 0xFFFF_FFFF_FFFF) << 80
            | 0x7 << 76
            | (counter >> 30) << 64
            | 0b10 << 62
            | (counter & 0x3FFF_FFFF) << 32
            | int.from_bytes(os.urandom(4), "big")
        )
        return UUID(int=value)


_new_id = _Ids()
if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(after_in_child=_new_id.reset)


def _now() -> datetime:
    return datetime.fromtimestamp(get_clock().time(), timezone.utc)


class _JSONError(ValueError):
    """A payload value that is not JSON; `path` grows as the error unwinds."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = ""


def _label(key: object) -> str:
    text = repr(key)
    return f"[{text if len(text) <= 40 else text[:37] + '...'}]"


def _json_copy(value: object, depth: int) -> object:
    """Return a copy of ``value`` made of plain JSON types, or raise `_JSONError`."""
    # Exact types: a subclass (an enum, a bool posing as an int) would come back as
    # its base type, so it is refused rather than converted.
    if type(value) is str:
        if not value.isascii() and _SURROGATE.search(value):
            raise _JSONError("a str with a lone surrogate cannot be encoded as UTF-8")
        return value
    if type(value) is int:
        if value.bit_length() > _MAX_INT_BITS:
            raise _JSONError(f"an int longer than {_MAX_INT_BITS} bits")
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise _JSONError(f"{value!r} is not a JSON number")
        return value
    if value is None or type(value) is bool:
        return value
    if isinstance(value, (dict, list)):
        if depth >= _MAX_DEPTH:
            raise _JSONError(f"nested deeper than {_MAX_DEPTH} levels")
        return _container_copy(value, depth + 1)
    hint = _HINTS.get(type(value))
    if isinstance(value, Enum):
        hint = "use its value"
    elif isinstance(value, (str, int, float)):
        hint = "use a plain " + next(b.__name__ for b in (str, int, float) if isinstance(value, b))
    problem = f"a {type(value).__name__} is not a JSON value"
    raise _JSONError(f"{problem} ({hint})" if hint else problem)


def _container_copy(value: dict[Any, Any] | list[Any], depth: int) -> object:
    where: object = None  # the index or key being copied, for the error's path
    try:
        if isinstance(value, list):
            items: list[object] = []
            for where, item in enumerate(value):  # noqa: B007 - the except clause reads it
                items.append(_json_copy(item, depth))
            return items
        copy: dict[str, object] = {}
        for where, item in value.items():
            copy[_json_key(where)] = _json_copy(item, depth)
    except _JSONError as exc:
        exc.path = f"{_label(where)}{exc.path}"
        raise
    return copy


def _json_key(key: object) -> str:
    if type(key) is not str:
        raise _JSONError(f"JSON object keys must be str, got a {type(key).__name__}")
    if not key.isascii() and _SURROGATE.search(key):
        raise _JSONError("a key with a lone surrogate cannot be encoded as UTF-8")
    return key


# What in a JSON text can make its parsed payload fail `_json_copy`: a lone surrogate
# (escaped, or as raw UTF-8 bytes), NaN or an infinity (a NaN token, a number with an
# exponent of three digits or more, which may overflow), an int longer than 1024 bits
# (309 digits), nesting past the depth limit. A text with none of them has a payload
# that passes unchanged: decoding it need not walk and copy it again (a third of the
# cost of decoding). A number ends at a delimiter, so an id such as "...9e123-..." does
# not look like one; text that merely looks risky takes the full walk. The patterns
# start with a literal, which `re` finds fast (a character class there costs ~3 us).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_UTF8 = re.compile(rb"\xed[\xa0-\xbf]")
_EXPONENT = re.compile(rb"e[+-]?[0-9]{3,}(?=[,\]}\s])")
_EXPONENT_UPPER = re.compile(rb"E[+-]?[0-9]{3,}(?=[,\]}\s])")
_LONG_NUMBER = re.compile(rb"[0-9]{300}")
_CHECKED_JSON = object()  # the validation context of a text `_plain_json` cleared


_SCAN_FROM = 512  # bytes: below, the walk of a payload costs less than the scan (~1.5 us)


def _plain_json(raw: bytes) -> bool:
    """Whether to skip the walk: a large text whose every payload passes `_json_copy`."""
    return not (
        len(raw) < _SCAN_FROM
        or raw.count(b"[") + raw.count(b"{") >= _MAX_DEPTH
        or b"NaN" in raw
        or b"Infinity" in raw
        or (b"\\u" in raw and _SURROGATE_ESCAPE.search(raw) is not None)
        or (b"\xed" in raw and _SURROGATE_UTF8.search(raw) is not None)
        or _EXPONENT.search(raw) is not None
        or _EXPONENT_UPPER.search(raw) is not None
        or _LONG_NUMBER.search(raw) is not None
    )


def _check_payload(value: object, info: ValidationInfo) -> object:
    if not isinstance(value, dict):
        raise _JSONError(f"must be a dict (a JSON object), got a {type(value).__name__}")
    if info.context is _CHECKED_JSON:  # fresh from the JSON parser, and plain: see above
        return value
    return _json_copy(value, 0)


def _check_name(value: str, what: str) -> str:
    problem = name_problem(value)
    if problem is not None:
        raise ValueError(f"{what}{problem}")
    return value


def _problems(error: ValidationError) -> list[str]:
    """One line per pydantic error, naming the field and never echoing the input."""
    lines: list[str] = []
    for detail in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in detail["loc"])
        cause = detail.get("ctx", {}).get("error")
        if isinstance(cause, _JSONError):
            where, message = where + cause.path, cause.problem
        elif isinstance(cause, ValueError):
            message = str(cause)
        else:
            message = detail["msg"]
        lines.append(f"{where}: {message}" if where else message)
    return lines


def _check_max_bytes(max_bytes: int) -> int:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ConfigurationError("max_bytes", f"must be an int >= 1, got {max_bytes!r}")
    return max_bytes


class Event(BaseModel):
    """An immutable message envelope that survives a trip through JSON unchanged.

    ``Event.from_json(event.to_json()) == event`` for every event that can be built: the
    constructor refuses anything JSON would change or lose, instead of converting it.

    Attributes:
        type: what happened, as dotted names: letters, digits, ``_`` and ``-``, starting
            with a letter, at most 255 characters (``"org.member_removed"``).
        key: the ordering key. Events with one key are published in the order they
            were added; events with different keys are independent. Required: a
            forgotten key would silently lose ordering. 1 to 255 characters, no control
            characters. Use the aggregate's id (``"org:acme"``).
        payload: the event's data, a `dict` of JSON values: `None`, `bool`, `int` (up to
            1024 bits), finite `float`, `str`, `list`, `dict` with `str` keys, nested at
            most 64 deep. Anything else (sets, tuples, bytes, NaN, enums, `Decimal`,
            `datetime`) is refused. The event keeps its own copy.
        headers: string metadata such as ``traceparent``: names of letters, digits,
            ``.``, ``_`` and ``-`` (at most 255 characters); values without control
            characters. Extensions belong here, not in new top-level fields.
        id: a unique id; by default a new UUIDv7, ordered by creation time.
        occurred_at: when it happened; timezone-aware (naive datetimes are refused) and
            stored in UTC. By default the clock's wall time (`resilience_kit.testing.
            use_clock` moves it in tests).
        schema_version: the version of the payload's schema, an int from 1.

    Raises:
        InvalidEventError: a field is missing, mistyped or breaks its rule; `problems`
            names each one. Never a pydantic ``ValidationError``.

    Examples:
        >>> from resilience_kit.messaging import Event
        >>> event = Event(type="org.member_removed", key="org:acme", payload={"user": "ann"})
        >>> event.schema_version, event.id.version, event.occurred_at.tzinfo
        (1, 7, datetime.timezone.utc)
        >>> Event.from_json(event.to_json()) == event
        True
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    id: UUID = Field(default_factory=_new_id)
    type: str
    key: str
    payload: Annotated[dict[str, Any], BeforeValidator(_check_payload)]
    headers: dict[str, str] = Field(default_factory=dict)
    occurred_at: datetime = Field(default_factory=_now)
    schema_version: Annotated[int, Field(ge=1, le=2**31 - 1)] = 1

    if not TYPE_CHECKING:  # pragma: no branch - type checkers take the other way
        # Hidden from type checkers, which keep the constructor signature pydantic gives.
        def __init__(self, /, **data: Any) -> None:
            try:
                super().__init__(**data)
            except ValidationError as exc:
                raise InvalidEventError(_problems(exc)) from None

        # Mark it as pydantic's own __init__, so that validation (from JSON, or of a model
        # holding an Event) does not route its raw input through this one.
        __init__.__pydantic_base_init__ = True

    @field_validator("type")
    @classmethod
    def _check_type(cls, value: str) -> str:
        if len(value) > NAME_MAX_LENGTH:
            raise ValueError(f"must be at most {NAME_MAX_LENGTH} characters, got {len(value)}")
        if not _TYPE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not dotted names of letters, digits, '_' and '-' "
                "starting with a letter, like 'org.member_removed'"
            )
        return value

    @field_validator("key")
    @classmethod
    def _check_key(cls, value: str) -> str:
        return _check_name(value, "")

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            _check_name(name, "a header name ")
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a header name: letters, digits, '.', '_', '-'")
            if CONTROL_OR_SURROGATE.search(text):
                raise ValueError(
                    f"the value of {name!r} must not contain control characters or lone surrogates"
                )
        return value

    @field_validator("occurred_at")
    @classmethod
    def _check_occurred_at(cls, value: datetime) -> datetime:
        if value.utcoffset() is None:
            raise ValueError("must be timezone-aware (a naive datetime's instant is unknown)")
        try:
            return value.astimezone(timezone.utc)
        except OverflowError:
            raise ValueError(f"{value.isoformat()} is out of range in UTC") from None

    def __hash__(self) -> int:
        return hash(self.id)

    def to_json(self, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
        """Encode the event as compact UTF-8 JSON, every field included.

        Args:
            max_bytes: the largest encoding allowed, in bytes.

        Raises:
            EventTooLargeError: the JSON is larger than ``max_bytes``.
            ConfigurationError: ``max_bytes`` is not an int >= 1.

        Examples:
            >>> from datetime import datetime, timezone
            >>> from uuid import UUID
            >>> event = Event(
            ...     id=UUID("0190f1e2-7b3a-7c00-8000-000000000001"),
            ...     type="org.member_added",
            ...     key="org:acme",
            ...     payload={"user": "ann", "roles": ["admin"]},
            ...     occurred_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
            ... )
            >>> data = event.to_json()
            >>> data[:45]
            b'{"id":"0190f1e2-7b3a-7c00-8000-000000000001",'
            >>> data[-69:]
            b'"headers":{},"occurred_at":"2026-01-01T00:00:00Z","schema_version":1}'
            >>> event.to_json(max_bytes=100)
            Traceback (most recent call last):
            ...
            resilience_kit.errors.EventTooLargeError: event too large: 200 bytes of JSON, more than max_bytes=100
        """  # noqa: E501 - a doctest's traceback line cannot be wrapped
        limit = _check_max_bytes(max_bytes)
        data = self.__pydantic_serializer__.to_json(self)
        if len(data) > limit:
            raise EventTooLargeError(size=len(data), max_bytes=limit)
        return data

    @classmethod
    def from_json(cls, data: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Self:
        """Decode an event from `to_json`'s output, or raise one typed error.

        Every field must be present (defaults are for building events, not for reading
        them: a missing id must not become a new one) and no other field may be: an
        unknown field means a message this version cannot fully read. If a key repeats
        in an object, its last value wins, as in most JSON parsers.

        Args:
            data: UTF-8 JSON, as bytes or str.
            max_bytes: the largest input accepted, in bytes; checked before parsing.

        Raises:
            MalformedEventError: ``data`` is not an event; never another parser error.
            EventTooLargeError: ``data`` is larger than ``max_bytes``.
            ConfigurationError: ``max_bytes`` is not an int >= 1.

        Examples:
            >>> event = Event.from_json(
            ...     '{"id":"0190f1e2-7b3a-7c00-8000-000000000001","type":"org.member_added",'
            ...     '"key":"org:acme","payload":{"user":"ann"},"headers":{},'
            ...     '"occurred_at":"2026-01-01T01:00:00+01:00","schema_version":1}'
            ... )
            >>> event.payload, event.occurred_at.isoformat()
            ({'user': 'ann'}, '2026-01-01T00:00:00+00:00')
            >>> Event.from_json(b'{"type": "org.member_added"}')
            Traceback (most recent call last):
            ...
            resilience_kit.errors.MalformedEventError: malformed event: key: Field required; ...
        """
        limit = _check_max_bytes(max_bytes)
        if isinstance(data, str):
            try:
                raw = data.encode()
            except UnicodeEncodeError:
                raise MalformedEventError(["the text has a lone surrogate"]) from None
        elif isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
        else:
            raise MalformedEventError([f"expected bytes or str, got {type(data).__name__}"])
        if len(raw) > limit:
            raise EventTooLargeError(size=len(raw), max_bytes=limit)
        try:
            event = cls.model_validate_json(
                raw, context=_CHECKED_JSON if _plain_json(raw) else None
            )
        except ValidationError as exc:
            raise MalformedEventError(_problems(exc)) from None
        if len(event.model_fields_set) < len(cls.model_fields):
            # Defaults are for building events: decoding one must not make up a new id
            # (a redelivered duplicate would no longer be recognised) or a new time.
            missing = [name for name in cls.model_fields if name not in event.model_fields_set]
            raise MalformedEventError([f"{name}: Field required" for name in missing])
        return event

    def with_headers(self, headers: Mapping[str, str] | None = None, /, **more: str) -> Self:
        """Return a copy with headers added or replaced; the rest is unchanged.

        Args:
            headers: headers by name (for names that are not identifiers, such as
                ``"x-request-id"``).
            **more: more headers, by keyword; they win over ``headers``.

        Raises:
            InvalidEventError: a header name or value breaks the rules.

        Examples:
            >>> event = Event(type="org.created", key="org:acme", payload={})
            >>> traced = event.with_headers({"x-request-id": "r1"}, traceparent="00-ab-cd-01")
            >>> traced.headers, traced.id == event.id, event.headers
            ({'x-request-id': 'r1', 'traceparent': '00-ab-cd-01'}, True, {})
        """
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        fields["headers"] = {**self.headers, **(headers or {}), **more}
        return type(self)(**fields)
