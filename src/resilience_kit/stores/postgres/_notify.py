"""LISTEN/NOTIFY wake-ups for outbox relays: a hint that rows were committed, never the truth.

`Outbox.add` notifies one channel per schema in the caller's transaction, so the
notification is delivered exactly when the rows become visible (and never for a
rolled-back transaction). A `Listener` waits for it on a connection of its own, not one
from the pool (a pooled connection would be handed to someone else, LISTEN and all).
"""

from __future__ import annotations

import hashlib
import logging
import select
import socket
import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import anyio.to_thread

from resilience_kit.errors import StoreError

if TYPE_CHECKING:
    import psycopg

    from resilience_kit.stores.postgres._db import Database

__all__ = ("Listener", "channel_for")

logger = logging.getLogger("resilience_kit.stores.postgres")

_MAX_CHANNEL = 63  # NAMEDATALEN - 1: a longer channel name is refused by pg_notify


def channel_for(schema: str) -> str:
    """The notification channel of the outbox in ``schema``."""
    channel = f"rk_outbox_{schema}"
    if len(channel) > _MAX_CHANNEL:
        channel = f"rk_outbox_{hashlib.sha256(schema.encode()).hexdigest()[:40]}"
    return channel


class _Wake:
    """A socket pair that wakes one waiting worker thread; each end is closed once.

    The waiting task closes the writer when it stops waiting (done or cancelled): the
    reader becomes readable and the worker's ``select`` returns. The reader is the
    worker's to close, unless the task gave up before the worker even started.
    """

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self._lock = threading.Lock()
        self._taken = False
        self._abandoned = False

    def take(self) -> bool:
        """The worker starts: False if the task has already stopped waiting."""
        with self._lock:
            self._taken = not self._abandoned
            return self._taken

    def abandon(self) -> None:
        """The task stops waiting: wake the worker, or clean up for one that never ran."""
        self.writer.close()
        with self._lock:
            self._abandoned = True
            if not self._taken:
                self.reader.close()


class Listener:
    """Waits for notifications on ``channel`` with a timeout, on a worker thread.

    The worker blocks in ``select`` on the connection's socket and on a socket pair of
    the call's own. When the waiting task is cancelled it stops waiting for the worker
    at once and closes its end of the pair, which wakes the worker: cancellation is
    prompt and the connection is free again straight away.
    """

    def __init__(self, db: Database, channel: str) -> None:
        self._db = db
        self._channel = channel
        self._connection: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()  # one waiter on the connection at a time
        self._wakers: set[_Wake] = set()
        self._wakers_lock = threading.Lock()
        self._received = 0  # notifications seen so far: a waiter that queued behind
        # another returns at once if one arrived meanwhile
        self._closed = False
        self._failing = False

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 - a worker thread waits
        """Return after a notification (possibly one received earlier) or ``timeout``.

        With ``timeout <= 0`` it only starts listening (if needed) and collects what
        has arrived. If the server cannot be reached it sleeps ``timeout`` instead:
        the caller polls anyway.
        """
        seen = self._received
        wake = _Wake()
        with self._wakers_lock:
            self._wakers.add(wake)
        try:
            ok = await anyio.to_thread.run_sync(
                self._wait, wake, seen, max(0.0, timeout), abandon_on_cancel=True
            )
        finally:
            with self._wakers_lock:
                self._wakers.discard(wake)
            wake.abandon()  # wakes the worker if this task was cancelled
        if not ok and timeout > 0:
            await anyio.sleep(timeout)
        else:
            await anyio.lowlevel.checkpoint()

    def _wait(self, wake: _Wake, seen: int, timeout: float) -> bool:
        if not wake.take():
            return True  # cancelled before this worker started
        try:
            with self._lock:
                if self._closed:
                    return True
                try:
                    connection = self._connect()
                    if self._collect(connection) or self._received != seen:
                        return True
                    if timeout > 0:
                        ready, _, _ = select.select(
                            [connection.fileno(), wake.reader.fileno()], [], [], timeout
                        )
                        if connection.fileno() in ready:
                            self._collect(connection)
                except (StoreError, OSError, self._db.psycopg.Error) as exc:
                    self._drop(exc)
                    return False
                self._failing = False
                return True
        finally:
            wake.reader.close()

    def _connect(self) -> psycopg.Connection[Any]:
        if self._connection is None or self._connection.closed:
            connection = self._db.connect()
            try:
                sql = self._db.sql
                connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _collect(self, connection: psycopg.Connection[Any]) -> bool:
        """Take the notifications already received, without waiting; True if any."""
        count = sum(1 for _ in connection.notifies(timeout=0))
        self._received += count
        return count > 0

    def _drop(self, exc: BaseException) -> None:
        if not self._failing:
            logger.warning(
                "%s: listening for outbox notifications failed (%s); polling only until "
                "the server is back",
                self._db.name,
                self._db.error(exc) if not isinstance(exc, StoreError) else exc,
            )
        self._failing = True
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def close(self) -> None:
        """Wake every waiter and close the connection."""
        with self._wakers_lock:
            self._closed = True
            for wake in self._wakers:
                wake.writer.close()
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
