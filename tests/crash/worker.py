"""One life of a relay + consumer process for the crash test; it may SIGKILL itself.

Usage: python -m tests.crash.worker APP BROKER_DB SEED MODE   (APP: see tests/crash/app.py)

MODE ``kill``: relay and consume until a point chosen at random from SEED, then die by
SIGKILL — before or after a publish, before or after marking rows published, after the
consumer's effects are written but before they commit, after the commit but before the
acknowledgement. MODE ``drain``: relay and consume until nothing is left, then exit 0.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import anyio

from resilience_kit import Backoff, RetryPolicy
from resilience_kit.messaging import Event, Inbox, OutboxRelay, ResilientConsumer
from tests.crash.app import App
from tests.crash.broker import BrokerPublisher, BrokerSubscriber

LEASE_FOR = 0.5


class Fate:
    """Counts the risky points passed and dies at the chosen one."""

    def __init__(self, seed: int, enabled: bool) -> None:
        rng = random.Random(seed)
        self.kill_at = rng.randrange(1, 30) if enabled else -1
        self.passed = 0

    def point(self) -> None:
        self.passed += 1
        if self.passed == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


async def main(spec: str, broker_db: Path, seed: int, mode: str) -> None:
    fate = Fate(seed, mode == "kill")
    rng = random.Random(seed * 7919)
    app = App(spec)
    store = app.store()
    store.migrate()

    class DyingPublisher(BrokerPublisher):
        async def publish(self, topic: str, event: Event) -> None:
            fate.point()
            await super().publish(topic, event)
            fate.point()

    outbox = store.outbox
    real_mark = outbox.mark_published

    async def dying_mark(messages: Any) -> int:
        fate.point()
        marked = await real_mark(messages)
        fate.point()
        return marked

    outbox.mark_published = dying_mark  # type: ignore[method-assign]
    relay = OutboxRelay(
        outbox,
        DyingPublisher(broker_db),
        batch_size=rng.choice([1, 3, 10, 50]),
        lease_for=LEASE_FOR,
        publish_timeout=LEASE_FOR / 2,
        poll_interval=0.05,
        retention=None,
    )
    inbox = Inbox(store.inbox, consumer="billing")

    async def apply_effect(event: Event) -> None:
        with app.transaction() as connection:
            if inbox.mark(connection, event):
                app.execute(
                    connection,
                    f"INSERT INTO {app.table('effects')} (event_id, order_id) VALUES (?, ?)",
                    str(event.id),
                    event.payload["order"],
                )
                fate.point()  # written, not committed
        fate.point()  # committed, not acknowledged

    class DyingSubscriber(BrokerSubscriber):
        async def ack(self, delivery: Any) -> None:
            fate.point()
            await super().ack(delivery)

    subscriber = DyingSubscriber(broker_db, group="billing")
    consumer = ResilientConsumer(
        subscriber,
        apply_effect,
        name="billing",
        dead_letters=store.dead_letters,
        inbox=inbox,
        retry=RetryPolicy(attempts=5, on=Exception, backoff=Backoff.constant(0.01)),
    )
    give_up_at = anyio.current_time() + 3.0  # a kill point never reached: end this life
    while mode == "drain" or anyio.current_time() < give_up_at:
        report = await relay.drain()
        await consumer.run()  # one pass over what the broker holds now
        status = await outbox.status()
        if mode == "drain" and status.backlog == 0 and subscriber.backlog() == 0:
            break
        if not report.claimed:
            await outbox.wait_for_rows(0.05)
    store.close()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
