"""Bulkhead in action: capping concurrency, queueing a few callers, shedding the rest.

python examples/policies/bulkhead.py
"""

from __future__ import annotations

import threading

import anyio

from resilience_kit import Bulkhead, BulkheadFullError
from resilience_kit.testing import VirtualClock


async def burst() -> None:
    print("== 10 concurrent writes into a bulkhead of 3 running + 2 waiting")
    bulkhead = Bulkhead(max_concurrent=3, max_waiting=2, name="audit-writes")
    storage_ready = anyio.Event()
    outcomes: dict[str, int] = {"stored": 0, "shed": 0}

    @bulkhead
    async def append_event(n: int) -> None:
        await storage_ready.wait()

    async def write(n: int) -> None:
        try:
            await append_event(n)
            outcomes["stored"] += 1
        except BulkheadFullError:
            outcomes["shed"] += 1

    async with anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(write, n)
        await anyio.wait_all_tasks_blocked()
        print(f"  running: {bulkhead.active}, waiting: {bulkhead.waiting}")
        print(f"  rejected at once: {outcomes['shed']}")
        storage_ready.set()
    print(f"  -> stored {outcomes['stored']}, shed {outcomes['shed']}")


async def bounded_wait() -> None:
    print("== a queued caller gives up after max_wait (virtual time)")
    clock = VirtualClock(auto_advance=False)
    bulkhead = Bulkhead(max_concurrent=1, max_waiting=5, max_wait=2.0, clock=clock, name="db")
    release = anyio.Event()

    @bulkhead
    async def hold_the_slot() -> None:
        await release.wait()

    async def impatient() -> None:
        try:
            await hold_the_slot()
        except BulkheadFullError as exc:
            print(f"  -> gave up at t={clock.monotonic():.1f}s: {exc}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold_the_slot)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(impatient)
        await anyio.wait_all_tasks_blocked()
        print(f"  waiting: {bulkhead.waiting}; advancing the clock by 2 s")
        clock.advance(2.0)
        await anyio.wait_all_tasks_blocked()
        release.set()


def threads() -> None:
    print("== the same kind of bulkhead guards threads")
    bulkhead = Bulkhead(max_concurrent=2, name="reports")
    release = threading.Event()
    started = threading.Barrier(3)

    @bulkhead
    def build_report() -> None:
        started.wait()
        release.wait()

    workers = [threading.Thread(target=build_report) for _ in range(2)]
    for worker in workers:
        worker.start()
    started.wait()  # both workers hold a slot
    try:
        build_report()
    except BulkheadFullError as exc:
        print(f"  -> a third thread is rejected: {exc}")
    release.set()
    for worker in workers:
        worker.join()
    print(f"  -> all slots free again: active={bulkhead.active}")


def main() -> None:
    for backend in ("asyncio", "trio"):
        print(f"######## on {backend}")
        anyio.run(burst, backend=backend)
        anyio.run(bounded_wait, backend=backend)
    threads()


if __name__ == "__main__":
    main()
