"""The command line's arguments: the parser, value types, and checks across arguments."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn
from uuid import UUID

from resilience_kit._checks import check_topic
from resilience_kit._cli.console import PROG, UsageError
from resilience_kit._version import __version__
from resilience_kit.messaging._records import DeadLetterFilter
from resilience_kit.stores._url import mask_url, parse_store_url

__all__ = ("STORE_ENV", "build_parser", "check_arguments", "dead_letter_filter", "parse_time")

STORE_ENV = "RESILIENCE_KIT_STORE"

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line and an exception, not an exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def parse_time(value: str, *, now: datetime | None = None) -> datetime:
    """An ISO 8601 date or time (naive means UTC), or an age such as ``90m``, ``2h``, ``7d``.

    Examples:
        >>> parse_time("2026-01-05T09:30Z")
        datetime.datetime(2026, 1, 5, 9, 30, tzinfo=datetime.timezone.utc)
        >>> start = datetime(2026, 1, 5, tzinfo=timezone.utc)
        >>> parse_time("2h", now=start)
        datetime.datetime(2026, 1, 4, 22, 0, tzinfo=datetime.timezone.utc)
    """
    text = value.strip()
    relative = _RELATIVE.fullmatch(text)
    if relative:
        moment = now if now is not None else datetime.now(timezone.utc)
        seconds = float(relative.group(1)) * _UNITS[relative.group(2)]
        try:
            return moment - timedelta(seconds=seconds)
        except OverflowError:
            raise ValueError(f"{value!r} reaches before year 1") from None
    if text[-1:] in ("Z", "z"):  # Python 3.10's fromisoformat does not read "Z"
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    return parsed.replace(tzinfo=timezone.utc) if parsed.utcoffset() is None else parsed


def _time(value: str) -> datetime:
    try:
        return parse_time(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 date or time (2026-01-05, 2026-01-05T09:30Z)"
            f" or an age (30m, 2h, 7d), got {value!r}"
        ) from None


def _uuid(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a dead letter id (a UUID): {value!r}") from None


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return number


def _position(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(
            f"expected an outbox position (a whole number >= 0), got {value!r}"
        )
    return number


def _rate(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"expected a number of messages > 0, got {value!r}")
    return number


def _common(parser: argparse.ArgumentParser, *, default: Any) -> None:
    """--store, --json, --debug: on the program and on every command, either place."""
    parser.add_argument(
        "--store",
        metavar="URL",
        default=default,
        help=f"the store: sqlite:///path, postgresql://..., redis://... (default: ${STORE_ENV})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="print one JSON document instead of tables",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="print the traceback of an error",
    )


def _filters(parser: argparse.ArgumentParser, *, ids: bool) -> None:
    group = parser.add_argument_group("filters (every one given must match)")
    group.add_argument("--topic", help="the original topic")
    group.add_argument("--source", help="outbox, or consumer:<name>")
    group.add_argument("--type", dest="event_type", metavar="EVENT_TYPE", help="the event type")
    group.add_argument(
        "--error",
        dest="error_type",
        metavar="ERROR_TYPE",
        help="the error's class name (ValueError) or qualified name (builtins.ValueError)",
    )
    group.add_argument(
        "--since", type=_time, metavar="TIME", help="dead-lettered at or after (ISO 8601, or 2h)"
    )
    group.add_argument("--until", type=_time, metavar="TIME", help="dead-lettered before")
    if ids:
        group.add_argument(
            "--id",
            dest="ids",
            type=_uuid,
            nargs="+",
            action="extend",
            metavar="ID",
            help="these dead letters (repeatable)",
        )


def build_parser(commands: dict[str, Callable[..., Any]]) -> argparse.ArgumentParser:
    """The ``resilience-kit`` parser; ``commands`` maps "group command" to its function."""
    parser = _Parser(
        prog=PROG,
        description="Inspect and repair resilience-kit's dead letters and outbox.",
        epilog=(
            "Exit status: 0 ok, 1 the operation failed or found nothing, 2 bad arguments"
            " or a store without its tables (create them with 'migrate')."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _common(parser, default=None)
    shared = _Parser(add_help=False)
    _common(shared, default=argparse.SUPPRESS)
    groups = parser.add_subparsers(
        dest="group", metavar="{dead-letters,outbox,migrate}", required=True
    )

    letters = groups.add_parser("dead-letters", help="list, show, replay and purge dead letters")
    letter_commands = letters.add_subparsers(dest="command", required=True)

    listing = letter_commands.add_parser(
        "list", parents=[shared], help="dead letters as a table, oldest first"
    )
    _filters(listing, ids=False)
    listing.add_argument(
        "--limit", type=_positive_int, default=50, metavar="N", help="at most N (default 50)"
    )
    listing.add_argument("--after", type=_uuid, metavar="ID", help="continue after this id")

    show = letter_commands.add_parser("show", parents=[shared], help="one dead letter in full")
    show.add_argument("id", type=_uuid, metavar="ID")

    replay = letter_commands.add_parser(
        "replay", parents=[shared], help="publish dead letters again, then remove them"
    )
    _filters(replay, ids=True)
    replay.add_argument(
        "--to",
        required=True,
        metavar="TARGET",
        help="'outbox' (the store's own outbox) or a redis:// URL (Redis Streams)",
    )
    replay.add_argument(
        "--to-topic", metavar="TOPIC", help="publish here instead of each letter's own topic"
    )
    replay.add_argument("--limit", type=_positive_int, metavar="N", help="replay at most N")
    replay.add_argument("--per-second", type=_rate, metavar="RATE", help="replay at most R/s")
    replay.add_argument(
        "--dry-run", action="store_true", help="list what would be replayed; change nothing"
    )

    purge = letter_commands.add_parser(
        "purge", parents=[shared], help="delete dead letters for good"
    )
    _filters(purge, ids=True)
    purge.add_argument("--all", action="store_true", help="purge every dead letter")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    outbox = groups.add_parser("outbox", help="the outbox's backlog and blocked rows; requeue rows")
    outbox_commands = outbox.add_subparsers(dest="command", required=True)
    outbox_commands.add_parser(
        "status", parents=[shared], help="pending, leased, blocked, published rows and the lag"
    )
    blocked = outbox_commands.add_parser(
        "blocked", parents=[shared], help="the blocked rows, oldest position first"
    )
    blocked.add_argument(
        "--limit", type=_positive_int, default=50, metavar="N", help="at most N (default 50)"
    )
    blocked.add_argument(
        "--after", type=_position, metavar="POSITION", help="continue after this position"
    )
    requeue = outbox_commands.add_parser(
        "replay", parents=[shared], help="requeue blocked rows, or rows at given positions"
    )
    requeue.add_argument(
        "--position",
        dest="positions",
        type=_positive_int,
        nargs="+",
        action="extend",
        metavar="N",
        help="requeue the blocked or published row at position N (repeatable)",
    )
    requeue.add_argument("--blocked", action="store_true", help="requeue every blocked row")

    groups.add_parser(
        "migrate",
        parents=[shared],
        help="create or upgrade the store's tables (no other command changes a schema)",
    ).set_defaults(command=None)

    for name, command in commands.items():
        group, _, leaf = name.partition(" ")
        if not leaf:
            groups.choices[group].set_defaults(handler=command)
            continue
        chooser = letter_commands if group == "dead-letters" else outbox_commands
        chooser.choices[leaf].set_defaults(handler=command)
    return parser


def dead_letter_filter(args: argparse.Namespace) -> DeadLetterFilter:
    """The filter the arguments describe."""
    ids = getattr(args, "ids", None)
    return DeadLetterFilter(
        topic=args.topic,
        source=args.source,
        event_type=args.event_type,
        error_type=args.error_type,
        since=args.since,
        until=args.until,
        ids=None if ids is None else tuple(dict.fromkeys(ids)),
    )


def _check_filter(args: argparse.Namespace) -> None:
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise UsageError("--since must be earlier than --until")


def check_arguments(args: argparse.Namespace) -> None:
    """Checks across arguments, made before the store is opened.

    Raises:
        UsageError: arguments that cannot go together, or a request that is refused.
        ConfigurationError: a bad value (``--to-topic``, the ``--to`` URL).
    """
    if hasattr(args, "since"):
        _check_filter(args)
    if args.group == "dead-letters" and args.command == "purge":
        where = dead_letter_filter(args)
        if args.all and not where.matches_everything:
            raise UsageError("--all purges every dead letter: it cannot be combined with filters")
        if not args.all and where.matches_everything:
            raise UsageError(
                "refusing to purge every dead letter: give a filter, or --all to purge them all"
            )
    if args.group == "dead-letters" and args.command == "replay":
        if args.to != "outbox":
            if args.to.partition("://")[0].lower() not in ("redis", "rediss"):
                raise UsageError(
                    f"--to takes 'outbox' or a redis:// URL, got {mask_url(args.to)!r}"
                )
            parse_store_url(args.to)
        if args.to_topic is not None:
            check_topic(args.to_topic)
    if args.group == "outbox" and args.command == "replay" and not (args.positions or args.blocked):
        raise UsageError("give --blocked, --position N, or both")
