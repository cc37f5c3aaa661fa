"""The ``resilience-kit`` command: inspect and repair dead letters and the outbox.

<!-- not run: the command synopsis -->
```text
resilience-kit dead-letters list|show|replay|purge ...
resilience-kit outbox status|blocked|replay ...
resilience-kit migrate
```

Every command takes ``--store URL`` (or ``$RESILIENCE_KIT_STORE``): ``sqlite:///path``,
``postgresql://...?schema=...``, ``redis://...?prefix=...`` (see
`resilience_kit.stores.open_store`), and ``--json`` to print one JSON document instead of
tables. Only ``migrate`` creates or upgrades a store's tables: every other command
refuses a database without them (exit 2) and leaves it as it was. Exit status: 0 ok,
1 the operation failed or found nothing, 2 bad arguments or no schema.
Errors are one line on stderr (``--debug`` adds the traceback); a password in a URL is
never printed.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from resilience_kit._cli.commands import COMMANDS
from resilience_kit._cli.console import (
    FAILED,
    OK,
    PROG,
    USAGE,
    CommandError,
    Console,
    UsageError,
)
from resilience_kit._cli.format import safe
from resilience_kit._cli.parser import STORE_ENV, build_parser, check_arguments
from resilience_kit.errors import (
    ConfigurationError,
    ResilienceError,
    StoreSchemaError,
    StoreUnavailableError,
)
from resilience_kit.stores._url import open_store, parse_store_url, scrub

__all__ = ("main",)

_INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


def _open(url: str) -> Any:
    """The store at ``url``; a SQLite file must exist (a typo must not create a database).

    The store never creates or migrates its tables by itself: only ``migrate`` does.
    """
    parsed = parse_store_url(url)
    if parsed.backend == "sqlite" and not Path(parsed.target).is_file():
        raise UsageError(
            f"no SQLite database at {parsed.target!r}"
            " (sqlite:///relative/path.db, sqlite:////absolute/path.db)"
        )
    return open_store(url, auto_migrate=False)


class _Warnings(logging.Handler):
    """The library's warnings (a corrupted record skipped...) as lines on stderr."""

    def __init__(self, console: Console, secrets: Sequence[str | None]) -> None:
        super().__init__(logging.WARNING)
        self._console = console
        self._secrets = secrets

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = _scrub_all(safe(record.getMessage()), self._secrets)
            self._console.note(f"{PROG}: warning: {message}")
        except Exception:  # noqa: BLE001 - logging's own way of reporting a broken handler
            self.handleError(record)


@contextmanager
def _warnings_shown(console: Console, secrets: Sequence[str | None]) -> Iterator[None]:
    logger = logging.getLogger("resilience_kit")
    handler = _Warnings(console, secrets)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _secrets(args: Any) -> list[str | None]:
    """The URLs whose passwords must never be printed."""
    return [getattr(args, "store", None), getattr(args, "to", None), os.environ.get(STORE_ENV)]


def _run(args: Any, console: Console) -> int:
    check_arguments(args)
    url = args.store or os.environ.get(STORE_ENV)
    if not url:
        raise UsageError(f"no store: give --store URL or set {STORE_ENV}")
    store = _open(url)
    try:
        with _warnings_shown(console, _secrets(args)):
            code: int = anyio.run(args.handler, store, args, console)
    finally:
        store.close()
    return code


def _message(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message for an error that ended a command."""
    if isinstance(exc, (UsageError, ConfigurationError)):
        return USAGE, str(exc)
    if isinstance(exc, StoreSchemaError):
        return USAGE, str(exc)
    if isinstance(exc, CommandError):
        return FAILED, str(exc)
    if isinstance(exc, StoreUnavailableError):
        return FAILED, f"the store is unavailable: {exc}"
    if isinstance(exc, (ResilienceError, ImportError)):
        return FAILED, str(exc)
    if isinstance(exc, OSError):
        return FAILED, f"{type(exc).__name__}: {exc}"
    return FAILED, f"unexpected {type(exc).__name__}: {exc} (--debug shows the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``resilience-kit`` command line; return its exit status.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Examples:
        >>> main(["dead-letters", "list", "--store", "memory://"])
        no dead letters
        0
        >>> main(["dead-letters", "purge", "--store", "memory://"])
        2
    """
    console = Console.from_sys()
    parser = build_parser(COMMANDS)
    args: Any = None
    try:
        args = parser.parse_args(argv)
        return _run(args, console)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else OK
    except KeyboardInterrupt:
        console.error("interrupted")
        return _INTERRUPTED
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        _silence_stdout()
        return FAILED
    except Exception as exc:  # noqa: BLE001 - the command line reports every error as one line
        code, message = _message(exc)
        secrets = _secrets(args)
        if getattr(args, "debug", False):
            console.note(_scrub_all("".join(traceback.format_exception(exc)).rstrip(), secrets))
        console.error(_scrub_all(message, secrets))
        return code


def _scrub_all(text: str, urls: Sequence[str | None]) -> str:
    for url in urls:
        text = scrub(text, url)
    return text


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - stdout without a file descriptor
        pass
