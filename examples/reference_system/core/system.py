"""The System: everything one drill runs on, in one process, in virtual time.

One `VirtualClock` (``auto_advance=False``, driven by `VirtualClock.autojump`), one
`MemoryBus`, one SQLite file per service in a temporary directory, the in-process
`Network`, the `RequestLog` and `SideEffectSink`, and every service's relay and
consumers running in one task group while the drill runs.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc

from resilience_kit.messaging import OutboxRelay, Publisher
from resilience_kit.stores.sqlite import SQLiteStore
from resilience_kit.testing import VirtualClock
from resilience_kit.transports import MemoryBus

from .mitigations import Mitigations
from .network import MONITOR, Network
from .records import RequestLog, SideEffectSink, Workload
from .service import Service, ServiceContext

S = TypeVar("S", bound=Service)


class System:
    """The services of one drill run, their infrastructure and the independent record."""

    def __init__(
        self, *, seed: int = 0, mitigations: Mitigations | None = None, workdir: Path | None = None
    ) -> None:
        self.seed = seed
        self.rand = random.Random(seed)
        self.mitigations = mitigations or Mitigations()
        self.clock = VirtualClock(auto_advance=False)
        self.bus = MemoryBus()
        self.network = Network(self.clock)
        self.log = RequestLog()
        self.sink = SideEffectSink(self.clock)
        self.observations: list[tuple[float, str]] = []
        # What the operator's monitor saw: (time, host, status) at every change.
        self.health: list[tuple[float, str, str]] = []
        self._workdir = workdir
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self.stores: dict[str, SQLiteStore] = {}
        self.relays: dict[str, OutboxRelay] = {}
        self.services: dict[str, list[Service]] = {}
        # Set while `running`: what a drill adds then starts at once (relay, consumers).
        self._group: anyio.abc.TaskGroup | None = None
        self._started: set[str] = set()
        self._relay_options: dict[str, dict[str, Any]] = {}

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="reference-system-")
            self._workdir = Path(self._tempdir.name)
        return self._workdir

    @property
    def urls(self) -> dict[str, str]:
        """Base URL per service name; in-process, the host is the service's name."""
        return {name: f"http://{name}" for name in self.services}

    def now(self) -> float:
        return self.clock.monotonic()

    def observe(self, what: str) -> None:
        """Record a mitigation seen acting (a breaker opening, a fallback serving...)."""
        self.observations.append((self.clock.monotonic(), what))

    def seen(self, since: float = 0.0) -> list[str]:
        """What was observed since ``since``, each once, in order of first sight."""
        return list(dict.fromkeys(what for at, what in self.observations if at >= since))

    def store(self, service: str) -> SQLiteStore:
        """The service's own database (one SQLite file, shared by its replicas)."""
        if service not in self.stores:
            store = SQLiteStore(self.workdir / f"{service}.db", clock=self.clock)
            store.migrate()
            self.stores[service] = store
            # Idle relays wake on commits through this store object; the poll is a backstop.
            # The relay's backoff jitter comes from the seed too: --seed N reproduces it.
            options: dict[str, Any] = {
                "poll_interval": 30.0,
                "publisher": self.bus,
                "rand": random.Random(f"{self.seed}:{service}.relay").random,
            }
            options.update(self._relay_options.get(service, {}))
            publisher = options.pop("publisher")
            self.relays[service] = OutboxRelay(
                store.outbox, publisher, name=f"{service}.relay", clock=self.clock, **options
            )
            if self._group is not None:  # created while running: relay from now on
                self._started.add(service)
                self._group.start_soon(self.relays[service].run)
        return self.stores[service]

    def relay_for(
        self, service: str, *, publisher: Publisher | None = None, **options: Any
    ) -> None:
        """Set how ``service``'s relay publishes (through a faulty ``publisher``, with
        another backoff...): `OutboxRelay` options; call it before the service is added."""
        if service in self.stores:
            raise RuntimeError(f"relay_for({service!r}) must come before the service is added")
        self._relay_options[service] = {
            **options,
            **({} if publisher is None else {"publisher": publisher}),
        }

    def add(
        self, service: str, factory: Callable[[ServiceContext], S], replicas: int = 1
    ) -> list[S]:
        """Create ``replicas`` replicas of ``service`` and put them on the network."""
        created: list[S] = []
        self.services.setdefault(service, [])
        for number in range(replicas):
            host = f"{service}-{len(self.services[service])}"
            ctx = ServiceContext(
                service=service,
                host=host,
                clock=self.clock,
                mitigations=self.mitigations,
                store=self.store(service),
                bus=self.bus,
                http=self.network.client(host),
                urls=_LazyUrls(self),
                sink=self.sink,
                observe=self.observe,
                rand=random.Random(f"{self.seed}:{host}:{number}"),
            )
            replica = factory(ctx)
            assert self.network.add(service, replica.app) == host
            self.services[service].append(replica)
            created.append(replica)
            if self._group is not None:  # added while running: start it now
                self._group.start_soon(replica.run)
        return created

    def workload(self, *, deadline: float = 30.0) -> Workload:
        """A client that logs every request in `log`; ``deadline``: its patience."""
        return Workload(self.network.client("workload"), self.log, self.clock, deadline)

    async def sleep(self, seconds: float) -> None:
        await self.clock.asleep(seconds)

    async def sleep_until(self, instant: float) -> None:
        await self.clock.asleep(max(0.0, instant - self.clock.monotonic()))

    def health_of(self, host: str, at: float | None = None) -> str:
        """The status the monitor last saw for ``host`` by ``at`` (now by default)."""
        at = self.clock.monotonic() if at is None else at
        seen = [status for when, name, status in self.health if name == host and when <= at]
        return seen[-1] if seen else "unknown"

    async def monitor(
        self,
        *,
        interval: float = 15.0,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Poll every replica's /health/ready as an operator's monitor would; record each
        change of status in `health` and as an observation ("identity-0 unhealthy")."""
        client = self.network.client(MONITOR)
        last: dict[str, str] = {}
        task_status.started()
        while True:
            for replicas in list(self.services.values()):
                for replica in replicas:
                    host = replica.ctx.host
                    try:
                        response = await client.get(f"http://{host}/health/ready")
                        status = str(response.json().get("status", "unknown"))
                    except Exception:  # unreachable: the monitor says so, it never crashes
                        status = "unreachable"
                    if last.get(host) != status:
                        last[host] = status
                        self.health.append((self.clock.monotonic(), host, status))
                        if status != "healthy":
                            self.observe(f"monitor: {host} {status}")
            await self.clock.asleep(interval)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[System]:
        """Run relays and consumers, with time jumping whenever all tasks are blocked."""
        async with AsyncExitStack() as stack:
            stack.callback(self._close_stores)
            stack.push_async_callback(self.network.aclose)
            group = await stack.enter_async_context(anyio.create_task_group())
            await stack.enter_async_context(self.clock.autojump())
            for service, relay in self.relays.items():
                self._started.add(service)
                await group.start(relay.run)
            for replicas in self.services.values():
                for replica in replicas:
                    await group.start(replica.run)
            await group.start(self.monitor)
            self._group = group
            try:
                yield self
            finally:
                self._group = None
                group.cancel_scope.cancel()

    def _close_stores(self) -> None:
        for replicas in self.services.values():
            for replica in replicas:
                replica.close()
        for store in self.stores.values():
            store.close()
        if self._tempdir is not None:
            self._tempdir.cleanup()


class _LazyUrls(dict[str, str]):
    """Base URLs resolved when used, so services added later are reachable too."""

    def __init__(self, system: System) -> None:
        super().__init__()
        self._system = system

    def __getitem__(self, service: str) -> str:
        return f"http://{service}"

    def get(self, service: str, default: str | None = None) -> str:  # type: ignore[override]
        return f"http://{service}"
