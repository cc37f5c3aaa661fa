"""The records messaging stores hand back: outbox messages, dead letters, idempotency records."""

from __future__ import annotations

import traceback as traceback_module
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal
from uuid import UUID

from resilience_kit.errors import InvalidEventError
from resilience_kit.messaging._event import DEFAULT_MAX_BYTES, Event, _new_id

__all__ = (
    "BlockedRow",
    "DeadLetter",
    "DeadLetterFilter",
    "IdempotencyRecord",
    "OutboxMessage",
    "OutboxStatus",
)


def _utc(moment: datetime) -> datetime:
    if moment.utcoffset() is None:
        raise ValueError("datetimes must be timezone-aware")
    return moment.astimezone(timezone.utc)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One outbox row claimed by a relay: what to publish, and the lease that fences it.

    Attributes:
        position: the row's id in the store; rows of one key are published in this order.
        topic: where to publish it.
        key: the event's ordering key (a column of its own, so claims need not decode).
        data: the event's JSON, exactly as `Outbox.add` stored it.
        attempts: how many times the row has been claimed, this claim included (a relay
            that crashes while publishing still uses up an attempt).
        lease: the lease token of this claim. Every write about the row names it, and a
            write whose lease is no longer the row's (it expired and another relay
            claimed the row) changes nothing.
        created_at: when the row was added (the database's clock).
        last_error: the error of the previous failed attempt, if any.
        first_failed_at: when an attempt at this row first failed, if one did.

    Examples:
        >>> from datetime import datetime, timezone
        >>> message = OutboxMessage(
        ...     position=1, topic="orgs", key="org:1", data=b"{}", attempts=1, lease="l1",
        ...     created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
        ... )
        >>> message.attempts, message.last_error
        (1, None)
    """

    position: int
    topic: str
    key: str
    data: bytes
    attempts: int
    lease: str
    created_at: datetime
    last_error: str | None = None
    first_failed_at: datetime | None = None

    def event(self, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Event:
        """Decode the stored event.

        Raises:
            MalformedEventError: the row's data is not an event (a corrupted row).

        Examples:
            >>> from datetime import datetime, timezone
            >>> event = Event(type="org.created", key="org:1", payload={})
            >>> message = OutboxMessage(
            ...     position=1, topic="orgs", key="org:1", data=event.to_json(), attempts=1,
            ...     lease="l1", created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
            ... )
            >>> message.event() == event
            True
        """
        return Event.from_json(self.data, max_bytes=max_bytes)


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """How far behind an outbox's relays are: counts by state and the age of the oldest row.

    Attributes:
        pending: rows waiting to be published (due now or later, not leased).
        leased: rows a relay holds right now.
        blocked: rows that used up their attempts under the ``"block"`` policy; each
            holds back the rest of its key until replayed.
        published: published rows not yet removed by the retention policy.
        oldest_pending_age: seconds since the oldest unpublished row was added (the
            lag), ``0.0`` when nothing is waiting.

    Examples:
        >>> status = OutboxStatus(
        ...     pending=3, leased=1, blocked=0, published=10, oldest_pending_age=0.5
        ... )
        >>> status.backlog
        4
    """

    pending: int
    leased: int
    blocked: int
    published: int
    oldest_pending_age: float

    @property
    def backlog(self) -> int:
        """Rows not yet published and not blocked: pending plus leased."""
        return self.pending + self.leased


@dataclass(frozen=True, slots=True)
class BlockedRow:
    """An outbox row that used up its attempts under the ``"block"`` policy.

    Each blocked row holds back the later rows of its key until it is requeued
    (``resilience-kit outbox replay --position N``); `OutboxStore.blocked` lists them.

    Attributes:
        position: the row's position: what ``requeue(positions=...)`` takes.
        topic: where it was to be published.
        key: the ordering key it holds back.
        event_id: the event's id, or ``None`` when the stored id cannot be read.
        event_type: the event's type.
        attempts: how many times the row was claimed before it was blocked.
        last_error: the error that blocked it (or the last one before), if recorded.
        created_at: when the row was added (the store's clock).
        first_failed_at: when an attempt at this row first failed, if one did.

    Examples:
        >>> from datetime import datetime, timezone
        >>> row = BlockedRow(
        ...     position=41, topic="orgs", key="org:1", event_id=None, event_type="org.created",
        ...     attempts=10, last_error="ConnectionError: broker down",
        ...     created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
        ... )
        >>> row.position, row.key, row.first_failed_at
        (41, 'org:1', None)
    """

    position: int
    topic: str
    key: str
    event_id: UUID | None
    event_type: str
    attempts: int
    last_error: str | None
    created_at: datetime
    first_failed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that was given up on, with everything needed to understand and replay it.

    Attributes:
        id: the dead letter's own id (a UUIDv7, so ids sort by time).
        source: who gave up: ``"outbox"`` for a relay, ``"consumer:<name>"`` for a consumer.
        topic: the topic the message was published to, or was to be published to.
        data: the message as stored or received, byte for byte. For a poison message
            (one that cannot be decoded) this is all there is.
        error_type: the qualified name of the last error (``"builtins.ValueError"``).
        error_message: its message.
        traceback: its formatted traceback (empty when there was none).
        attempts: how many attempts were made before giving up.
        first_failed_at: when the first attempt failed.
        last_failed_at: when the last attempt failed.
        dead_lettered_at: when it was put here.
        key: the event's ordering key, when known.
        replays: how many times this message was replayed from dead letters before.

    Examples:
        >>> event = Event(type="org.created", key="org:1", payload={})
        >>> letter = DeadLetter.create(
        ...     source="outbox", topic="orgs", data=event.to_json(),
        ...     error=ConnectionError("broker down"), attempts=5,
        ... )
        >>> letter.error_type, letter.event == event, letter.event_type
        ('builtins.ConnectionError', True, 'org.created')
    """

    id: UUID
    source: str
    topic: str
    data: bytes
    error_type: str
    error_message: str
    traceback: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    dead_lettered_at: datetime
    key: str | None = None
    replays: int = 0
    event: Event | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            event: Event | None = Event.from_json(self.data)
        except InvalidEventError:
            event = None
        object.__setattr__(self, "event", event)
        if self.key is None and event is not None:
            object.__setattr__(self, "key", event.key)

    @property
    def event_id(self) -> UUID | None:
        """The event's id, or ``None`` for a poison message."""
        return self.event.id if self.event is not None else None

    @property
    def event_type(self) -> str | None:
        """The event's type, or ``None`` for a poison message."""
        return self.event.type if self.event is not None else None

    @classmethod
    def create(
        cls,
        *,
        source: str,
        topic: str,
        data: bytes,
        error: BaseException,
        attempts: int,
        first_failed_at: datetime | None = None,
        now: datetime | None = None,
        key: str | None = None,
        replays: int = 0,
    ) -> DeadLetter:
        """Build a dead letter from the error that ended the last attempt.

        Args:
            source: ``"outbox"`` or ``"consumer:<name>"``.
            topic: the message's topic.
            data: the message's bytes.
            error: the last error; its type, message and traceback are kept.
            attempts: attempts made.
            first_failed_at: when the first attempt failed (default: ``now``).
            now: the time of the last failure (default: the current UTC time).
            key: the ordering key, when the data cannot be decoded to tell it.
            replays: replays so far (from the message's ``rk-replays`` header).
        """
        moment = _utc(now) if now is not None else datetime.now(timezone.utc)
        kind = type(error)
        return cls(
            id=_new_id(),
            source=source,
            topic=topic,
            data=bytes(data),
            error_type=f"{kind.__module__}.{kind.__qualname__}",
            error_message=str(error),
            traceback="".join(traceback_module.format_exception(error)),
            attempts=attempts,
            first_failed_at=_utc(first_failed_at) if first_failed_at is not None else moment,
            last_failed_at=moment,
            dead_lettered_at=moment,
            key=key,
            replays=replays,
        )


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters to list, count, replay or purge; every field given must match.

    Attributes:
        topic: the original topic.
        source: ``"outbox"`` or ``"consumer:<name>"``.
        event_type: the event's type (poison messages have none and never match).
        error_type: the error's qualified name, or its bare class name
            (``"ConnectionError"`` matches ``"builtins.ConnectionError"``).
        since: dead-lettered at or after this time.
        until: dead-lettered before this time.
        ids: only these dead letters.

    Examples:
        >>> DeadLetterFilter(topic="orgs").matches_everything
        False
        >>> DeadLetterFilter().matches_everything
        True
    """

    topic: str | None = None
    source: str | None = None
    event_type: str | None = None
    error_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    ids: tuple[UUID, ...] | None = None

    @property
    def matches_everything(self) -> bool:
        """True when no field is set (a purge with it empties the queue)."""
        return all(
            value is None
            for value in (
                self.topic,
                self.source,
                self.event_type,
                self.error_type,
                self.since,
                self.until,
                self.ids,
            )
        )

    def matches(self, letter: DeadLetter) -> bool:
        """Whether ``letter`` passes the filter (the in-memory reference of every backend).

        Examples:
            >>> from resilience_kit.messaging import DeadLetter, DeadLetterFilter
            >>> letter = DeadLetter.create(
            ...     source="outbox", topic="orgs", data=b"{", error=ValueError("x"), attempts=1
            ... )
            >>> DeadLetterFilter(error_type="ValueError").matches(letter)
            True
            >>> DeadLetterFilter(event_type="org.created").matches(letter)
            False
        """
        if self.topic is not None and letter.topic != self.topic:
            return False
        if self.source is not None and letter.source != self.source:
            return False
        if self.event_type is not None and letter.event_type != self.event_type:
            return False
        if self.error_type is not None and not (
            letter.error_type == self.error_type
            or letter.error_type.rpartition(".")[2] == self.error_type
        ):
            return False
        if self.since is not None and letter.dead_lettered_at < _utc(self.since):
            return False
        if self.until is not None and letter.dead_lettered_at >= _utc(self.until):
            return False
        return self.ids is None or letter.id in self.ids


IdempotencyStatus = Literal["in_progress", "completed"]


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What an idempotency store holds for one key.

    Attributes:
        key: the scoped key.
        fingerprint: a digest of the request that first used the key.
        status: ``"in_progress"`` while the first call runs, ``"completed"`` after.
        token: the claim token of the call that owns the record; completing or
            releasing the record requires it.
        result: the stored outcome (serialised), once completed.
        expires_in: seconds until the record expires (an in-progress claim's lock, or a
            completed result's time to live), by the store's clock.

    Examples:
        >>> record = IdempotencyRecord(
        ...     key="k", fingerprint="f", status="in_progress", token="t", result=None,
        ...     expires_in=30.0,
        ... )
        >>> record.status
        'in_progress'
    """

    key: str
    fingerprint: str
    status: IdempotencyStatus
    token: str
    result: bytes | None
    expires_in: float
