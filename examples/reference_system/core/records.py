"""The independent record a drill is judged on — never the services' own counters.

- `RequestLog`: every request the workload made, with its outcome as the client saw it.
- `SideEffectSink`: every effect on the outside world (e-mails sent, rows written,
  events delivered), recorded where the effect happens, keyed so duplicates show.
- `Workload`: the client that makes requests through the network and logs them.

Outcomes, as a client sees them:

| outcome | meaning |
|---|---|
| served | 2xx |
| degraded | 2xx with an ``x-degraded`` header (a fallback answered) |
| rejected | refused on purpose: 401/403/404/409/422/429, or 503 with ``Retry-After`` |
| failed | anything else: other 4xx/5xx, a connection error, the client's deadline |
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from resilience_kit import Timeout
from resilience_kit.testing import VirtualClock

Outcome = Literal["served", "degraded", "rejected", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("served", "degraded", "rejected", "failed")
_REFUSALS = frozenset({401, 403, 404, 409, 422, 429})


@dataclass(frozen=True)
class RequestRecord:
    """One request of the workload and what came back."""

    seq: int
    client: str
    operation: str
    target: str
    started: float
    finished: float
    status: int | None  # None: no response (connection error, client deadline)
    outcome: Outcome
    retry_after: str | None = None
    error: str | None = None
    body: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, Any] = field(default_factory=dict)

    @property
    def latency(self) -> float:
        return self.finished - self.started


def classify(status: int | None, headers: Mapping[str, str]) -> Outcome:
    """The outcome of a response, as in the module's table."""
    if status is None:
        return "failed"
    if 200 <= status < 300:
        return "degraded" if "x-degraded" in headers else "served"
    if status in _REFUSALS or (status == 503 and "retry-after" in headers):
        return "rejected"
    return "failed"


class RequestLog:
    """Every request the workload made, in order of completion."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def add(self, record: RequestRecord) -> None:
        self.records.append(record)

    def where(self, predicate: Callable[[RequestRecord], bool]) -> list[RequestRecord]:
        return [record for record in self.records if predicate(record)]

    def between(self, since: float, until: float = float("inf")) -> list[RequestRecord]:
        """The requests that started in ``[since, until)``."""
        return self.where(lambda record: since <= record.started < until)

    @staticmethod
    def tally(records: Iterable[RequestRecord]) -> Counter[str]:
        """How many of ``records`` had each outcome (every outcome present, maybe 0)."""
        counts: Counter[str] = Counter(dict.fromkeys(OUTCOMES, 0))
        counts.update(record.outcome for record in records)
        return counts


@dataclass(frozen=True)
class SideEffect:
    """One effect on the outside world."""

    at: float
    kind: str  # "email", "row", "event", ...
    key: str  # what makes two effects the same effect (an event id, a row's key)
    service: str
    details: Mapping[str, Any] = field(default_factory=dict)


class SideEffectSink:
    """Where services' effects on the outside world are recorded, as they happen."""

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock
        self.effects: list[SideEffect] = []

    def record(self, kind: str, key: str, service: str, **details: Any) -> None:
        self.effects.append(SideEffect(self._clock.monotonic(), kind, key, service, details))

    def of(self, kind: str) -> list[SideEffect]:
        return [effect for effect in self.effects if effect.kind == kind]

    def duplicates(self, kind: str) -> int:
        """Effects of ``kind`` beyond the first for their key (an e-mail sent twice: 1)."""
        counts = Counter(effect.key for effect in self.of(kind))
        return sum(count - 1 for count in counts.values())


class Workload:
    """Makes requests as a client would, and logs every one with its outcome.

    Each request has a client-side deadline on the virtual clock: a request that hangs
    is logged as failed at the deadline, never waited for forever.
    """

    def __init__(
        self, http: httpx.AsyncClient, log: RequestLog, clock: VirtualClock, deadline: float
    ) -> None:
        self._http = http
        self.log = log
        self._clock = clock
        self._deadline = Timeout(deadline, clock=clock, name="workload.deadline")
        self._seq = 0

    async def request(
        self,
        client: str,
        operation: str,
        method: str,
        url: str,
        *,
        token: str | None = None,
        json: Any = None,
        tags: Mapping[str, Any] | None = None,
    ) -> RequestRecord:
        """Send one request; log and return its record."""
        self._seq += 1
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        started = self._clock.monotonic()
        status: int | None = None
        response_headers: Mapping[str, str] = {}
        body: Mapping[str, Any] = {}
        error: str | None = None
        try:
            response = await self._deadline.acall(
                lambda: self._http.request(method, url, headers=headers, json=json)
            )
        except (httpx.HTTPError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            status = response.status_code
            response_headers = response.headers
            if response.headers.get("content-type", "").startswith("application/json"):
                body = response.json()
        record = RequestRecord(
            seq=self._seq,
            client=client,
            operation=operation,
            target=httpx.URL(url).host,
            started=started,
            finished=self._clock.monotonic(),
            status=status,
            outcome=classify(status, response_headers),
            retry_after=response_headers.get("retry-after"),
            error=error,
            body=body,
            tags=dict(tags or {}),
        )
        self.log.add(record)
        return record
