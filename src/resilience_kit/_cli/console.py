"""The command line's streams, exit codes and the two errors commands end with."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from typing import TextIO

__all__ = ("FAILED", "OK", "USAGE", "CommandError", "Console", "UsageError")

OK = 0
FAILED = 1  # the operation failed, or what was asked for does not exist
USAGE = 2  # bad arguments: nothing was done

PROG = "resilience-kit"


class UsageError(Exception):
    """Bad arguments, a bad URL or a refused request: exit 2, nothing was changed."""


class CommandError(Exception):
    """The operation failed or found nothing: exit 1."""


@dataclass
class Console:
    """Where a command writes: results to ``out``, errors and prompts to ``err``."""

    out: TextIO
    err: TextIO
    stdin: TextIO

    @classmethod
    def from_sys(cls) -> Console:
        """The process's streams, as they are now (tests capture them)."""
        return cls(sys.stdout, sys.stderr, sys.stdin)

    def print(self, text: str = "") -> None:
        """Write a line of results."""
        _write(self.out, text + "\n")

    def error(self, message: str) -> None:
        """Write ``resilience-kit: error: <message>`` on one line."""
        _write(self.err, f"{PROG}: error: {message}\n")

    def note(self, text: str) -> None:
        """Write a line for the operator (stderr: never mixed into results)."""
        _write(self.err, text + "\n")

    def interactive(self) -> bool:
        """Whether a person can answer a question (stdin is a terminal)."""
        isatty = getattr(self.stdin, "isatty", None)
        try:
            return bool(isatty and isatty())
        except (OSError, ValueError):  # a closed or detached stream
            return False

    def ask(self, question: str) -> bool:
        """Ask a yes/no question on the terminal; anything but y/yes is no."""
        _write(self.err, f"{question} [y/N] ")
        self.err.flush()
        answer = self.stdin.readline()
        if not answer.endswith("\n"):  # end of input: the question got no answer
            _write(self.err, "\n")
        return answer.strip().lower() in {"y", "yes"}

    def width(self) -> int | None:
        """The width to fit tables in: ``$COLUMNS``, or the terminal's; None when piped."""
        columns = os.environ.get("COLUMNS", "")
        if columns.isdigit() and int(columns) > 0:
            return int(columns)
        isatty = getattr(self.out, "isatty", None)
        if isatty is None or not isatty():
            return None
        return shutil.get_terminal_size().columns


def _write(stream: TextIO, text: str) -> None:
    try:
        stream.write(text)
    except UnicodeEncodeError:  # a terminal that cannot show some stored character
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
