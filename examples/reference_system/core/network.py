"""The in-process network: every service replica is an ASGI app reachable by name.

A request to ``http://identity/login`` goes to one replica of the Identity service
(round robin), ``http://identity-2/login`` to that replica. Faults are injected per
(source, destination), optionally per path prefix:

- ``down``: the connection is refused (`httpx.ConnectError`), at once;
- ``hang``: the request waits until the fault is cleared, or the caller gives up;
- ``latency``: the request is delayed by ``seconds`` on the virtual clock;
- ``drop``: the request is served, but its response is lost on the way back
  (`httpx.ReadError`): the caller cannot tell whether it happened;
- ``partition``: ``down`` between two groups of hosts, both ways.

Every request that reaches the routing layer is recorded in `Network.calls` — the
independent count of "calls that reached the failed dependency". Service code never
sees this module: it gets an `httpx.AsyncClient` and base URLs, so the same code runs
over real sockets.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import httpx

from resilience_kit.testing import VirtualClock

FaultKind = Literal["down", "hang", "latency", "drop"]


@dataclass(frozen=True)
class Call:
    """One request that reached the routing layer."""

    at: float
    source: str
    service: str
    host: str
    path: str
    fault: str | None  # the fault that met it, if any


@dataclass
class Fault:
    """A fault on the path from ``sources`` to ``destinations`` (None: any)."""

    kind: FaultKind
    destinations: frozenset[str] | None
    sources: frozenset[str] | None = None
    path: str = ""
    seconds: float = 0.0
    cleared: anyio.Event = field(default_factory=anyio.Event)

    def matches(self, source: str, service: str, host: str, path: str) -> bool:
        if self.sources is not None and not ({source, _service_of(source)} & self.sources):
            return False
        if self.destinations is not None and not ({service, host} & self.destinations):
            return False
        return path.startswith(self.path)


MONITOR = "monitor"
"""The source name of the operator's health monitor (`System.monitor`)."""


def _service_of(host: str) -> str:
    name, _, number = host.rpartition("-")
    return name if name and number.isdigit() else host


class Network:
    """Name resolution, load balancing and fault injection for in-process services."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self._replicas: dict[str, list[str]] = {}
        self._apps: dict[str, Any] = {}
        self._turn: dict[str, itertools.cycle[str]] = {}
        self.faults: list[Fault] = []
        self.calls: list[Call] = []
        self._clients: list[httpx.AsyncClient] = []

    def add(self, service: str, app: Any) -> str:
        """Register one replica of ``service``; return its host name (``service-N``)."""
        hosts = self._replicas.setdefault(service, [])
        host = f"{service}-{len(hosts)}"
        hosts.append(host)
        self._apps[host] = app
        self._turn[service] = itertools.cycle(list(hosts))
        return host

    def hosts(self, service: str) -> list[str]:
        """The replicas of ``service``, in order."""
        return list(self._replicas[service])

    def client(self, source: str, **kwargs: Any) -> httpx.AsyncClient:
        """An httpx client whose requests leave from host ``source``."""
        client = httpx.AsyncClient(transport=_RoutingTransport(self, source), **kwargs)
        self._clients.append(client)
        return client

    async def aclose(self) -> None:
        """Close every client handed out; release hung requests."""
        self.clear()
        for client in self._clients:
            await client.aclose()

    # -- faults ---------------------------------------------------------------------------

    def inject(
        self,
        kind: FaultKind,
        destinations: str | Iterable[str] | None,
        *,
        sources: str | Iterable[str] | None = None,
        path: str = "",
        seconds: float = 0.0,
    ) -> Fault:
        """Start a fault; `clear` ends it."""
        fault = Fault(kind, _names(destinations), _names(sources), path, seconds)
        self.faults.append(fault)
        return fault

    def partition(self, group_a: Iterable[str], group_b: Iterable[str]) -> list[Fault]:
        """Cut every connection between the two groups, both ways."""
        a, b = frozenset(group_a), frozenset(group_b)
        return [self.inject("down", b, sources=a), self.inject("down", a, sources=b)]

    def clear(self, *faults: Fault) -> None:
        """End ``faults`` (all of them when none is given); hung requests fail then."""
        for fault in faults or tuple(self.faults):
            if fault in self.faults:
                self.faults.remove(fault)
            fault.cleared.set()

    def calls_to(self, service: str, since: float = 0.0, until: float = float("inf")) -> int:
        """How many requests reached ``service`` (or host) between the two instants.

        The operator's health monitor (source ``monitor``) is not traffic a mitigation
        is meant to hold back, so it is not counted.
        """
        return sum(
            1
            for call in self.calls
            if service in (call.service, call.host)
            and since <= call.at < until
            and call.source != MONITOR
        )

    # -- routing --------------------------------------------------------------------------

    def _resolve(self, name: str) -> tuple[str, str]:
        if name in self._apps:
            return _service_of(name), name
        if name in self._turn:
            return name, next(self._turn[name])
        raise httpx.ConnectError(f"unknown host {name!r}")

    async def _route(self, source: str, request: httpx.Request) -> httpx.Response:
        service, host = self._resolve(request.url.host)
        path = request.url.path
        fault = next((f for f in self.faults if f.matches(source, service, host, path)), None)
        self.calls.append(
            Call(self.clock.monotonic(), source, service, host, path, fault and fault.kind)
        )
        if fault is not None:
            if fault.kind == "down":
                raise httpx.ConnectError(f"{host} is down", request=request)
            if fault.kind == "hang":
                await fault.cleared.wait()
                raise httpx.ReadError(f"{host} reset the connection", request=request)
            if fault.kind == "latency":
                await self.clock.asleep(fault.seconds)
        transport = httpx.ASGITransport(app=self._apps[host])
        response = await transport.handle_async_request(request)
        if fault is not None and fault.kind == "drop":
            await response.aread()  # served in full: only the answer never arrives
            raise httpx.ReadError(f"{host} dropped the connection", request=request)
        return response


def _names(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset([value] if isinstance(value, str) else value)


class _RoutingTransport(httpx.AsyncBaseTransport):
    def __init__(self, network: Network, source: str) -> None:
        self._network = network
        self._source = source

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._network._route(self._source, request)
