r"""What the command line prints: tables fitted to the terminal, field lists, JSON documents.

Stored text (topics, error messages, tracebacks, payloads) came from outside: control
characters in it are shown escaped (``\x1b``), never written raw to the terminal.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from resilience_kit.messaging._records import (
    BlockedRow,
    DeadLetter,
    DeadLetterFilter,
    OutboxStatus,
)

__all__ = (
    "Column",
    "blocked_document",
    "blocked_table",
    "dead_letter_details",
    "dead_letter_document",
    "dead_letter_table",
    "describe_filter",
    "duration",
    "field_list",
    "moment",
    "safe",
    "status_document",
    "status_fields",
    "table",
    "to_json",
)

_ELLIPSIS = "…"
_GAP = "  "


def count(n: int, noun: str, plural: str | None = None) -> str:
    """A number and its noun as a person writes them: ``1 dead letter``, ``2 dead letters``.

    Examples:
        >>> count(1, "row"), count(3, "poison message"), count(2, "id")
        ('1 row', '3 poison messages', '2 ids')
    """
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def safe(text: str, *, multiline: bool = False) -> str:
    r"""``text`` with control and invisible characters escaped (``\n`` kept if ``multiline``).

    Examples:
        >>> safe("red\x1b[31m alert\n")
        'red\\x1b[31m alert\\n'
    """
    if text.isprintable():
        return text
    kept = "\n\t" if multiline else ""
    return "".join(
        char if char.isprintable() or char in kept else char.encode("unicode_escape").decode()
        for char in text
    )


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: its title, the width it may shrink to, and its alignment."""

    title: str
    minimum: int | None = None  # None: never shrunk
    right: bool = False
    first: bool = False  # shrunk (to its minimum) before the others are


def _fit(cell: str, width: int) -> str:
    return cell if len(cell) <= width else cell[: max(width - 1, 0)] + _ELLIPSIS


def table(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int | None) -> str:
    """Rows under titles, columns two spaces apart, shrunk to ``width`` when one is given.

    Columns marked ``first`` shrink first; then the widest shrinkable column gives up a
    character at a time until the table fits (or every shrinkable column is at its
    minimum). Cut cells end with ``…``.

    Examples:
        >>> print(table([Column("ID"), Column("NOTE", minimum=4)], [["1", "a long note"]], 10))
        ID  NOTE
        1   a lon…
    """
    cells = [[safe(cell) for cell in row] for row in rows]
    widths = [
        max([len(column.title)] + [len(row[index]) for row in cells])
        for index, column in enumerate(columns)
    ]
    if width is not None:
        excess = sum(widths) + len(_GAP) * (len(columns) - 1) - width
        while excess > 0:
            shrinkable = [
                index
                for index, column in enumerate(columns)
                if column.minimum is not None and widths[index] > column.minimum
            ]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda index: (columns[index].first, widths[index]))
            widths[widest] -= 1
            excess -= 1
    lines = []
    for row in [[column.title for column in columns], *cells]:
        fitted = [
            _fit(cell, widths[index]).rjust(widths[index])
            if columns[index].right
            else _fit(cell, widths[index]).ljust(widths[index])
            for index, cell in enumerate(row)
        ]
        lines.append(_GAP.join(fitted).rstrip())
    return "\n".join(lines)


def field_list(fields: Sequence[tuple[str, str]]) -> str:
    """``label  value`` lines with the values aligned.

    Examples:
        >>> print(field_list([("topic", "orgs"), ("attempts", "3")]))
        topic     orgs
        attempts  3
    """
    width = max(len(label) for label, _ in fields)
    return "\n".join(f"{label.ljust(width)}  {safe(value)}".rstrip() for label, value in fields)


def moment(value: datetime | None, *, precise: bool = False) -> str:
    """A time in UTC: ``2026-01-05 09:30:00`` (``precise``: ISO 8601 with microseconds).

    Examples:
        >>> moment(datetime(2026, 1, 5, 9, 30, 0, 250, tzinfo=timezone.utc))
        '2026-01-05 09:30:00'
    """
    if value is None:
        return "-"
    utc = value.astimezone(timezone.utc)
    return utc.isoformat() if precise else utc.strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float) -> str:
    """A short human duration: ``0.4s``, ``12s``, ``4m 05s``, ``3h 02m``, ``2d 04h``.

    Examples:
        >>> duration(0.4), duration(245), duration(90_000)
        ('0.4s', '4m 05s', '1d 01h')
    """
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86_400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86_400}d {whole % 86_400 // 3600:02d}h"


def describe_filter(where: DeadLetterFilter) -> str:
    """The filter in words, for prompts and messages.

    Examples:
        >>> describe_filter(DeadLetterFilter(topic="orgs", error_type="ValueError"))
        'topic=orgs, error=ValueError'
        >>> describe_filter(DeadLetterFilter())
        'every dead letter'
    """
    parts = [
        f"{label}={safe(value)}"
        for label, value in (
            ("topic", where.topic),
            ("source", where.source),
            ("type", where.event_type),
            ("error", where.error_type),
        )
        if value is not None
    ]
    if where.since is not None:
        parts.append(f"since={moment(where.since)}")
    if where.until is not None:
        parts.append(f"until={moment(where.until)}")
    if where.ids is not None:
        parts.append(count(len(where.ids), "id"))
    return ", ".join(parts) or "every dead letter"


def _short_error(error_type: str) -> str:
    return error_type.rpartition(".")[2]


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


_LETTER_COLUMNS = (
    Column("ID"),
    Column("DEAD-LETTERED (UTC)"),
    Column("SOURCE", minimum=6),
    Column("TOPIC", minimum=6),
    Column("TYPE", minimum=6),
    Column("ERROR", minimum=6),
    Column("ATTEMPTS", right=True),
    Column("MESSAGE", minimum=12, first=True),
)


def dead_letter_table(letters: Sequence[DeadLetter], width: int | None) -> str:
    """The dead letters as a table: the columns an operator scans, one row each."""
    rows = [
        [
            str(letter.id),
            moment(letter.dead_lettered_at),
            letter.source,
            letter.topic,
            letter.event_type or "(poison)",
            _short_error(letter.error_type),
            str(letter.attempts),
            _first_line(letter.error_message),
        ]
        for letter in letters
    ]
    return table(_LETTER_COLUMNS, rows, width)


def _data_fields(data: bytes) -> tuple[str, str]:
    """The data as text when it is UTF-8, else base64; and which of the two it is."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def dead_letter_document(letter: DeadLetter) -> dict[str, Any]:
    """Every field of a dead letter as JSON-ready values (the event decoded when it is one)."""
    data, encoding = _data_fields(letter.data)
    return {
        "id": str(letter.id),
        "source": letter.source,
        "topic": letter.topic,
        "key": letter.key,
        "event_id": None if letter.event_id is None else str(letter.event_id),
        "event_type": letter.event_type,
        "error_type": letter.error_type,
        "error_message": letter.error_message,
        "traceback": letter.traceback,
        "attempts": letter.attempts,
        "replays": letter.replays,
        "first_failed_at": moment(letter.first_failed_at, precise=True),
        "last_failed_at": moment(letter.last_failed_at, precise=True),
        "dead_lettered_at": moment(letter.dead_lettered_at, precise=True),
        "data": data,
        "data_encoding": encoding,
        "event": None if letter.event is None else json.loads(letter.data),
    }


def dead_letter_details(letter: DeadLetter) -> str:
    """A dead letter in full: its fields, the traceback, then the event (or the raw data)."""
    fields = [
        ("id", str(letter.id)),
        ("source", letter.source),
        ("topic", letter.topic),
        ("key", letter.key or "-"),
        ("event id", "-" if letter.event_id is None else str(letter.event_id)),
        ("event type", letter.event_type or "- (poison: the data is not an event)"),
        ("error type", letter.error_type),
        ("error message", _first_line(letter.error_message)),
        ("attempts", str(letter.attempts)),
        ("replays", str(letter.replays)),
        ("first failed", moment(letter.first_failed_at, precise=True)),
        ("last failed", moment(letter.last_failed_at, precise=True)),
        ("dead-lettered", moment(letter.dead_lettered_at, precise=True)),
    ]
    sections = [field_list(fields)]
    if "\n" in letter.error_message.strip():
        sections.append("error message:\n" + _indent(safe(letter.error_message, multiline=True)))
    sections.append(
        "traceback:\n" + _indent(safe(letter.traceback.rstrip(), multiline=True) or "(none)")
    )
    if letter.event is not None:
        pretty = json.dumps(json.loads(letter.data), indent=2, ensure_ascii=False)
        sections.append("event:\n" + safe(pretty, multiline=True))
    else:
        data, encoding = _data_fields(letter.data)
        text = safe(data, multiline=True) if encoding == "utf-8" else data
        sections.append(f"data ({len(letter.data)} bytes, {encoding}):\n" + _indent(text))
    return "\n\n".join(sections)


def _indent(text: str) -> str:
    return "\n".join("  " + line if line else line for line in text.splitlines())


def status_fields(status: OutboxStatus) -> str:
    """An outbox's counts and lag as a field list."""
    return field_list(
        [
            ("pending", str(status.pending)),
            ("leased", str(status.leased)),
            ("blocked", str(status.blocked)),
            ("published", str(status.published)),
            ("backlog", str(status.backlog)),
            ("lag", f"{duration(status.oldest_pending_age)} (the oldest unpublished row's age)"),
        ]
    )


def status_document(status: OutboxStatus) -> dict[str, Any]:
    """An outbox's counts and lag as JSON-ready values."""
    return {
        "pending": status.pending,
        "leased": status.leased,
        "blocked": status.blocked,
        "published": status.published,
        "backlog": status.backlog,
        "lag_seconds": status.oldest_pending_age,
    }


_BLOCKED_COLUMNS = (
    Column("POSITION", right=True),
    Column("KEY", minimum=6),
    Column("TOPIC", minimum=6),
    Column("TYPE", minimum=6),
    Column("ATTEMPTS", right=True),
    Column("FIRST FAILED (UTC)"),
    Column("LAST ERROR", minimum=12, first=True),
)


def blocked_table(rows: Sequence[BlockedRow], width: int | None) -> str:
    """Blocked outbox rows as a table: the position to requeue, the key it holds back, why."""
    return table(
        _BLOCKED_COLUMNS,
        [
            [
                str(row.position),
                row.key,
                row.topic,
                row.event_type,
                str(row.attempts),
                moment(row.first_failed_at),
                _first_line(row.last_error or "") or "-",
            ]
            for row in rows
        ],
        width,
    )


def blocked_document(row: BlockedRow) -> dict[str, Any]:
    """Every field of a blocked outbox row as JSON-ready values."""
    return {
        "position": row.position,
        "topic": row.topic,
        "key": row.key,
        "event_id": None if row.event_id is None else str(row.event_id),
        "event_type": row.event_type,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "created_at": moment(row.created_at, precise=True),
        "first_failed_at": (
            None if row.first_failed_at is None else moment(row.first_failed_at, precise=True)
        ),
    }


def to_json(document: Any) -> str:
    """One JSON document, indented, in ASCII: stored text cannot reach a terminal raw."""
    return json.dumps(document, indent=2)
