"""The command line's commands: each takes the open store, the arguments and the console.

Every command returns an exit code, or raises `UsageError` (exit 2) or `CommandError`
(exit 1); errors of the stores propagate to `resilience_kit.cli.main`, which reports them.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio.to_thread

from resilience_kit._cli.console import FAILED, OK, CommandError, Console, UsageError
from resilience_kit._cli.format import (
    blocked_document,
    blocked_table,
    count,
    dead_letter_details,
    dead_letter_document,
    dead_letter_table,
    describe_filter,
    safe,
    status_document,
    status_fields,
    to_json,
)
from resilience_kit._cli.parser import dead_letter_filter
from resilience_kit.errors import CorruptRecordError
from resilience_kit.messaging._dead_letter import DeadLetterQueue, ReplayReport
from resilience_kit.messaging._outbox import Outbox
from resilience_kit.messaging._protocols import DeadLetterStore, OutboxStore, Publisher
from resilience_kit.messaging._records import DeadLetter, DeadLetterFilter
from resilience_kit.stores._url import parse_store_url

__all__ = ("COMMANDS", "open_publisher")

Command = Callable[[Any, argparse.Namespace, Console], Awaitable[int]]


class _Store(Protocol):
    """What every command needs from a store: its dead letters (an outbox is optional)."""

    @property
    def dead_letters(self) -> DeadLetterStore: ...


def _queue(store: _Store) -> DeadLetterQueue:
    return DeadLetterQueue(store.dead_letters)


def _outbox(store: object) -> OutboxStore:
    outbox = getattr(store, "outbox", None)
    if not isinstance(outbox, OutboxStore):
        raise UsageError(
            f"{store!r} has no outbox (an outbox lives in the SQL database of the business"
            " writes): point --store at that database"
        )
    return outbox


async def _close(resource: object) -> None:
    aclose = getattr(resource, "aclose", None)
    if aclose is not None:
        await aclose()


def open_publisher(target: str, store: object) -> Publisher:
    """Where ``--to`` replays go: the store's own outbox, or Redis Streams at a URL.

    Raises:
        UsageError: ``outbox`` for a store without one.
        StoreURLError: a bad Redis URL.
    """
    if target == "outbox":
        return Outbox(_outbox(store))
    parsed = parse_store_url(target)
    from resilience_kit.transports.redis import RedisStreams  # noqa: PLC0415 - redis extra

    if parsed.option is None:
        return RedisStreams(url=parsed.target)
    return RedisStreams(url=parsed.target, prefix=parsed.option)


async def list_dead_letters(store: _Store, args: argparse.Namespace, console: Console) -> int:
    """``dead-letters list``: a page of matching dead letters, oldest first."""
    where = dead_letter_filter(args)
    letters = await _queue(store).list(where, limit=args.limit, after=args.after)
    next_after = str(letters[-1].id) if len(letters) == args.limit else None
    if args.json:
        console.print(
            to_json(
                {
                    "dead_letters": [dead_letter_document(letter) for letter in letters],
                    "next_after": next_after,
                }
            )
        )
        return OK
    if not letters:
        console.print(_none(where))
        return OK
    console.print(dead_letter_table(letters, console.width()))
    if next_after is not None:
        console.note(f"showing the first {args.limit}; for more: --after {next_after}")
    return OK


async def show_dead_letter(store: _Store, args: argparse.Namespace, console: Console) -> int:
    """``dead-letters show ID``: one dead letter in full."""
    try:
        letter = await _queue(store).show(args.id)
    except CorruptRecordError as exc:
        raise CommandError(
            f"dead letter {args.id} is corrupted and cannot be shown ({exc}); it was left as it is"
        ) from exc
    if letter is None:
        raise CommandError(f"no dead letter with id {args.id}")
    console.print(
        to_json(dead_letter_document(letter)) if args.json else dead_letter_details(letter)
    )
    return OK


async def _dry_run(store: _Store, args: argparse.Namespace, console: Console) -> int:
    """What a replay would do, following its rules: poison skipped, ``--limit`` events."""
    would: list[DeadLetter] = []
    skipped: list[DeadLetter] = []
    letters = _queue(store).iterate(dead_letter_filter(args))
    try:
        async for letter in letters:
            if args.limit is not None and len(would) >= args.limit:
                break
            (skipped if letter.event is None else would).append(letter)
    finally:
        await _close(letters)  # an async generator left early: close it now, not at GC
    if args.json:
        console.print(
            to_json(
                {
                    "dry_run": True,
                    "to": _target(args),
                    "would_replay": [dead_letter_document(letter) for letter in would],
                    "would_skip": [str(letter.id) for letter in skipped],
                }
            )
        )
        return OK
    if would:
        console.print(dead_letter_table(would, console.width()))
        console.print()
    console.print(
        f"dry run: would replay {count(len(would), 'dead letter')} to {_target(args)}"
        f" ({_topic(args)}); would skip {count(len(skipped), 'poison message')};"
        " nothing was changed"
    )
    return OK


def _none(where: DeadLetterFilter) -> str:
    if where.matches_everything:
        return "no dead letters"
    return f"no dead letters match {describe_filter(where)}"


def _target(args: argparse.Namespace) -> str:
    if args.to == "outbox":
        return "outbox"
    return parse_store_url(args.to).masked


def _topic(args: argparse.Namespace) -> str:
    return "each to its own topic" if args.to_topic is None else f"to topic {args.to_topic}"


def _replay_document(report: ReplayReport) -> dict[str, Any]:
    return {
        "dry_run": False,
        "replayed": [str(letter_id) for letter_id in report.replayed],
        "skipped": [str(letter_id) for letter_id in report.skipped],
        "failed": [{"id": str(letter_id), "error": error} for letter_id, error in report.failed],
    }


async def replay_dead_letters(store: _Store, args: argparse.Namespace, console: Console) -> int:
    """``dead-letters replay``: publish matching dead letters again (or, dry, list them)."""
    if args.dry_run:
        return await _dry_run(store, args, console)
    publisher = open_publisher(args.to, store)
    try:
        report = await _queue(store).replay(
            dead_letter_filter(args),
            publisher,
            topic=args.to_topic,
            limit=args.limit,
            per_second=args.per_second,
        )
    finally:
        await _close(publisher)
    if args.json:
        console.print(to_json(_replay_document(report)))
    else:
        console.print(f"replayed {len(report.replayed)} to {_target(args)} ({_topic(args)})")
        if report.skipped:
            console.print(
                f"skipped {count(len(report.skipped), 'poison message')}: not events, left in place"
            )
        if report.failed:
            console.print(f"failed {len(report.failed)} (left in place):")
        for letter_id, error in report.failed:
            console.print(f"  {letter_id}: {safe(error)}")
    return FAILED if report.failed else OK


async def purge_dead_letters(store: _Store, args: argparse.Namespace, console: Console) -> int:
    """``dead-letters purge``: delete matching dead letters, after confirmation."""
    where = dead_letter_filter(args)
    queue = _queue(store)
    if not args.yes:
        if not console.interactive():
            raise UsageError(
                "refusing to purge without confirmation: stdin is not a terminal; pass --yes"
            )
        total = await queue.count(where)
        if total == 0:
            console.print(f"nothing to purge: {_none(where)}")
            return OK
        question = f"Purge {count(total, 'dead letter')} ({describe_filter(where)}) for good?"
        # Asked on the event loop's thread on purpose: nothing else runs meanwhile, and
        # Ctrl-C interrupts a read there at once (a worker thread would hold the exit).
        if not console.ask(question):
            raise CommandError("aborted: nothing was purged")
    purged = await queue.purge(where, everything=args.all)
    if args.json:
        console.print(to_json({"purged": purged}))
    else:
        console.print(f"purged {count(purged, 'dead letter')}")
    return OK


async def outbox_status(store: object, args: argparse.Namespace, console: Console) -> int:
    """``outbox status``: counts by state, backlog and lag."""
    status = await _outbox(store).status()
    console.print(to_json(status_document(status)) if args.json else status_fields(status))
    if status.blocked and not args.json:
        console.note(
            f"{count(status.blocked, 'blocked row')} hold back their keys: list them with"
            " 'resilience-kit outbox blocked', then requeue with 'outbox replay'"
        )
    return OK


async def outbox_blocked(store: object, args: argparse.Namespace, console: Console) -> int:
    """``outbox blocked``: a page of blocked rows, by position."""
    rows = await _outbox(store).blocked(limit=args.limit, after=args.after)
    next_after = rows[-1].position if len(rows) == args.limit else None
    if args.json:
        console.print(
            to_json({"blocked": [blocked_document(row) for row in rows], "next_after": next_after})
        )
        return OK
    if not rows:
        console.print("no blocked rows" if args.after is None else "no more blocked rows")
        return OK
    console.print(blocked_table(rows, console.width()))
    if next_after is not None:
        console.note(f"showing the first {args.limit}; for more: --after {next_after}")
    return OK


async def outbox_replay(store: object, args: argparse.Namespace, console: Console) -> int:
    """``outbox replay``: make blocked rows, and rows at given positions, pending again."""
    outbox = _outbox(store)
    positions = list(dict.fromkeys(args.positions or ()))
    at_positions = await outbox.requeue(positions=positions, blocked=True) if positions else 0
    blocked = await outbox.requeue(blocked=True) if args.blocked else 0
    missed = len(positions) - at_positions
    if args.json:
        console.print(
            to_json(
                {
                    "requeued": at_positions + blocked,
                    "at_positions": at_positions,
                    "positions_not_requeued": missed,
                    "blocked": blocked,
                }
            )
        )
    else:
        console.print(f"requeued {count(at_positions + blocked, 'row')}")
        if missed:
            console.note(
                f"{missed} of the {count(len(positions), 'position')} given were not requeued:"
                " no such row, or it is pending or leased"
            )
    return FAILED if missed else OK


async def migrate_store(store: object, args: argparse.Namespace, console: Console) -> int:
    """``migrate``: create or upgrade the store's tables; the one command that may."""
    migrate = getattr(store, "migrate", None)
    if migrate is None:  # Redis: keys, no tables
        if args.json:
            console.print(to_json({"migrated": False, "store": repr(store)}))
        else:
            console.print(f"{store!r} has no tables to create: nothing to do")
        return OK
    await anyio.to_thread.run_sync(functools.partial(migrate))
    if args.json:
        console.print(to_json({"migrated": True, "store": repr(store)}))
    else:
        console.print(f"the tables of {store!r} are created and up to date")
    return OK


COMMANDS: dict[str, Command] = {
    "dead-letters list": list_dead_letters,
    "dead-letters show": show_dead_letter,
    "dead-letters replay": replay_dead_letters,
    "dead-letters purge": purge_dead_letters,
    "outbox status": outbox_status,
    "outbox blocked": outbox_blocked,
    "outbox replay": outbox_replay,
    "migrate": migrate_store,
}
"""Each command by its words on the command line."""
