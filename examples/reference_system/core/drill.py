"""Drills: the registry, the result every drill returns, and how one is run.

A drill is an ``async def run(system) -> DrillResult`` registered with `drill`: it
builds its services on the `System`, runs a workload, injects its fault, lets the
mitigation act, recovers, and computes its figures from the `RequestLog`, the
`SideEffectSink` and the `Network`'s call record — never from the services' own
counters. Its `Check`s are the pass criterion of the analysis.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .mitigations import KNOWN, Mitigations
from .system import System


def count(n: int, noun: str, plural: str | None = None) -> str:
    """A number and its noun as a person writes them: ``1 dead letter``, ``3 attempts``."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


@dataclass(frozen=True)
class Check:
    """One part of a drill's pass criterion, with the measured value that decided it."""

    name: str
    passed: bool
    detail: str


@dataclass
class DrillResult:
    """What a drill measured. Counts come from the independent record."""

    served: int = 0
    degraded: int = 0
    rejected: int = 0
    failed: int = 0
    wrongly_allowed: int = 0
    events_lost: int = 0
    duplicate_effects: int = 0
    dead_lettered: int = 0
    dependency_calls: int = 0
    time_to_recover: float | None = None
    mitigations_seen: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    def check(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append(Check(name, bool(passed), detail))


Runner = Callable[[System], Awaitable[DrillResult]]


@dataclass(frozen=True)
class Drill:
    """A registered failure drill."""

    name: str
    number: int
    service: str
    scenario: str
    fault: str
    mitigations: tuple[str, ...]  # what --without-mitigation can switch off here
    criterion: str
    page: str  # the docs page, relative to docs/reference-system/
    run: Runner


DRILLS: dict[str, Drill] = {}


def drill(
    *,
    name: str,
    number: int,
    service: str,
    scenario: str,
    fault: str,
    mitigations: tuple[str, ...],
    criterion: str,
    page: str,
) -> Callable[[Runner], Runner]:
    """Register the decorated ``async def run(system) -> DrillResult`` as a drill."""

    def register(run: Runner) -> Runner:
        if name in DRILLS:
            raise ValueError(f"drill {name!r} is registered twice")
        unknown = set(mitigations) - KNOWN.keys()
        if unknown:
            raise ValueError(f"drill {name!r}: unknown mitigations {sorted(unknown)}")
        DRILLS[name] = Drill(
            name, number, service, scenario, fault, mitigations, criterion, page, run
        )
        return run

    return register


def registry() -> dict[str, Drill]:
    """Every drill, in scenario order (importing the drill modules registers them)."""
    from reference_system import drills  # noqa: F401, PLC0415  (registers; a cycle at top level)

    return dict(sorted(DRILLS.items(), key=lambda item: item[1].number))


@dataclass
class Report:
    """One drill run: which drill, how it was run, what it measured."""

    drill: Drill
    seed: int
    backend: str
    without: tuple[str, ...]
    result: DrillResult
    wall_seconds: float
    virtual_seconds: float

    def as_json(self) -> dict[str, Any]:
        """The drill's entry in the JSON report (schema in docs/reference-system/index.md)."""
        result = self.result
        return {
            "name": self.drill.name,
            "number": self.drill.number,
            "service": self.drill.service,
            "scenario": self.drill.scenario,
            "fault": self.drill.fault,
            "criterion": self.drill.criterion,
            "seed": self.seed,
            "backend": self.backend,
            "without_mitigation": list(self.without),
            "mitigations_seen": result.mitigations_seen,
            "requests": {
                "served": result.served,
                "degraded": result.degraded,
                "rejected": result.rejected,
                "failed": result.failed,
            },
            "wrongly_allowed": result.wrongly_allowed,
            "events_lost": result.events_lost,
            "duplicate_effects": result.duplicate_effects,
            "dead_lettered": result.dead_lettered,
            "dependency_calls": result.dependency_calls,
            "time_to_recover": result.time_to_recover,
            "checks": [asdict(check) for check in result.checks],
            "notes": result.notes,
            "passed": result.passed,
            "wall_seconds": round(self.wall_seconds, 3),
            "virtual_seconds": round(self.virtual_seconds, 3),
        }


async def run_drill(
    drill: Drill, *, seed: int = 0, without: tuple[str, ...] = (), backend: str = "asyncio"
) -> Report:
    """Run one drill on a fresh `System` and return its report."""
    system = System(seed=seed, mitigations=Mitigations.without(without))
    started = time.perf_counter()
    async with system.running():
        result = await drill.run(system)
        virtual = system.now()
    result.mitigations_seen = result.mitigations_seen or system.seen()
    return Report(drill, seed, backend, without, result, time.perf_counter() - started, virtual)
