"""What counts as a corrupt messaging record: one pure function per kind, for every backend.

Each backend turns its row or value into a mapping of fields and calls the function of
the record's kind; the function returns the record, or raises `CorruptRecordError`
naming the store, the record and what is wrong. docs/stores.md ("What counts as a
corrupt record") lists the rules and what each primitive does with such a record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from resilience_kit._integrity import RecordReader
from resilience_kit.messaging._records import DeadLetter, IdempotencyRecord, OutboxMessage

__all__ = (
    "IDEMPOTENCY_STATUSES",
    "read_dead_letter",
    "read_idempotency_record",
    "read_inbox_record",
    "read_outbox_message",
)

IDEMPOTENCY_STATUSES = ("in_progress", "completed")

TimeReader = Callable[[Any], datetime]


def read_idempotency_record(
    *, store: str, key: str, fields: Mapping[str, object], record: str | None = None
) -> IdempotencyRecord:
    """The idempotency record in ``fields``, or `CorruptRecordError`.

    Fields: ``fingerprint`` (text), ``status`` (``in_progress`` or ``completed``),
    ``token`` (non-empty text: a claim always has an owner), ``result`` (bytes exactly
    when completed) and ``expires_in`` (seconds, a number; infinite for a record that
    never expires).

    Args:
        store: the store's repr.
        key: the record's key, as the caller asked for it.
        fields: what the backend read.
        record: how the store names the record in errors (default: ``key``).

    Raises:
        CorruptRecordError: a field is missing, of the wrong type, or the status and
            the result disagree.

    Examples:
        >>> fields = {"fingerprint": "f", "status": "completed", "token": "t",
        ...           "result": None, "expires_in": 5.0}
        >>> read_idempotency_record(store="db", key="k", fields=fields)
        Traceback (most recent call last):
        ...
        resilience_kit.errors.CorruptRecordError: db: the idempotency record 'k' cannot be \
read back (status 'completed' without a result)
    """
    name = key if record is None else record
    reader = RecordReader(store=store, kind="idempotency record", record=name, fields=fields)
    fingerprint = reader.text("fingerprint")
    status = reader.choice("status", IDEMPOTENCY_STATUSES)
    token = reader.text("token", empty=False)
    result = reader.optional_blob("result")
    if (status == "completed") != (result is not None):
        raise reader.corrupt(
            f"status {status!r} with{'' if result is not None else 'out'} a result"
        )
    return IdempotencyRecord(
        key=key,
        fingerprint=fingerprint,
        status="completed" if status == "completed" else "in_progress",
        token=token,
        result=result,
        expires_in=reader.number("expires_in"),
    )


def read_dead_letter(
    *,
    store: str,
    record: object,
    fields: Mapping[str, object],
    time: TimeReader | None = None,
) -> DeadLetter:
    """The dead letter in ``fields``, or `CorruptRecordError`.

    Fields: ``id`` (a UUID), ``source``, ``topic`` and ``error_type`` (non-empty text),
    ``key`` (text or none), ``data`` (bytes), ``error_message`` and ``traceback``
    (text), ``attempts`` and ``replays`` (integers >= 0), ``first_failed_at``,
    ``last_failed_at`` and ``dead_lettered_at`` (times).

    Args:
        store: the store's repr.
        record: how the store names the letter in errors.
        fields: what the backend read.
        time: how the backend stores times (default: aware datetimes).

    Raises:
        CorruptRecordError: a field is missing, of the wrong type or out of range.

    Examples:
        >>> letter = DeadLetter.create(
        ...     source="outbox", topic="orgs", data=b"{", error=ValueError("x"), attempts=1
        ... )
        >>> fields = {name: getattr(letter, name) for name in DEAD_LETTER_FIELDS}
        >>> read_dead_letter(store="db", record=letter.id, fields=fields) == letter
        True
    """
    reader = RecordReader(store=store, kind="dead letter", record=record, fields=fields, time=time)
    return DeadLetter(
        id=reader.uuid("id"),
        source=reader.text("source", empty=False),
        topic=reader.text("topic", empty=False),
        data=reader.blob("data"),
        error_type=reader.text("error_type", empty=False),
        error_message=reader.text("error_message"),
        traceback=reader.text("traceback"),
        attempts=reader.count("attempts"),
        first_failed_at=reader.moment("first_failed_at"),
        last_failed_at=reader.moment("last_failed_at"),
        dead_lettered_at=reader.moment("dead_lettered_at"),
        key=reader.optional_text("key"),
        replays=reader.count("replays"),
    )


DEAD_LETTER_FIELDS = (
    "id",
    "source",
    "topic",
    "key",
    "data",
    "error_type",
    "error_message",
    "traceback",
    "attempts",
    "first_failed_at",
    "last_failed_at",
    "dead_lettered_at",
    "replays",
)
"""The fields `read_dead_letter` reads: a `DeadLetter`'s, by the same names."""


def read_outbox_message(
    *,
    store: str,
    position: int,
    lease: str,
    fields: Mapping[str, object],
    time: TimeReader | None = None,
) -> OutboxMessage:
    """The outbox row claimed at ``position`` under ``lease``, or `CorruptRecordError`.

    Fields: ``topic`` and ``key`` (non-empty text), ``data`` (bytes: whether they hold
    an event is the relay's business, which dead-letters a row that does not),
    ``attempts`` (this claim included, so >= 1), ``created_at`` (a time),
    ``last_error`` (text or none) and ``first_failed_at`` (a time or none). A claim
    without a lease token is corrupt too (no write could be fenced by it).

    Args:
        store: the store's repr.
        position: the row's position.
        lease: the claim's lease token.
        fields: what the backend read.
        time: how the backend stores times (default: aware datetimes).

    Raises:
        CorruptRecordError: a field is missing, of the wrong type or out of range.

    Examples:
        >>> from datetime import datetime, timezone
        >>> fields = {"topic": "orgs", "key": "org:1", "data": b"{}", "attempts": 0,
        ...           "created_at": datetime(2026, 1, 1, tzinfo=timezone.utc)}
        >>> read_outbox_message(store="db", position=3, lease="l", fields=fields)
        Traceback (most recent call last):
        ...
        resilience_kit.errors.CorruptRecordError: db: the outbox row '3' cannot be read \
back (attempts is 0, below 1)
    """
    reader = RecordReader(store=store, kind="outbox row", record=position, fields=fields, time=time)
    if not lease:
        raise reader.corrupt("the claim holds no lease token")
    return OutboxMessage(
        position=position,
        topic=reader.text("topic", empty=False),
        key=reader.text("key", empty=False),
        data=reader.blob("data"),
        attempts=reader.count("attempts", minimum=1),
        lease=lease,
        created_at=reader.moment("created_at"),
        last_error=reader.optional_text("last_error"),
        first_failed_at=reader.optional_moment("first_failed_at"),
    )


def read_inbox_record(
    *,
    store: str,
    record: object,
    fields: Mapping[str, object],
    time: TimeReader | None = None,
) -> tuple[str, UUID, datetime]:
    """An inbox record's consumer, event id and time of processing, or `CorruptRecordError`.

    An inbox record is a presence: (``consumer``, ``event_id``) was processed. Its
    ``processed_at`` only dates it for ``purge``, so a record whose time cannot be read
    still counts as processed (the handler never runs twice because of it), and a purge
    leaves it in place with a warning.

    Raises:
        CorruptRecordError: a field is missing, of the wrong type or out of range.

    Examples:
        >>> import uuid
        >>> fields = {"consumer": "billing", "event_id": uuid.uuid4(), "processed_at": "soon"}
        >>> read_inbox_record(store="db", record="billing", fields=fields)
        Traceback (most recent call last):
        ...
        resilience_kit.errors.CorruptRecordError: db: the inbox record 'billing' cannot be \
read back (processed_at is not a time (not a timezone-aware datetime))
    """
    reader = RecordReader(store=store, kind="inbox record", record=record, fields=fields, time=time)
    return (
        reader.text("consumer", empty=False),
        reader.uuid("event_id"),
        reader.moment("processed_at"),
    )
