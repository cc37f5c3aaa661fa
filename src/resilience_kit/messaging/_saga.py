"""`Saga`: steps across services, each with a compensation, run forwards or undone.

One pure core (STYLE.md 11): `saga_plan` reads what happened so far (the journal's
marks) and says what to do next; `Saga.run` only performs it — runs the step or its
compensation under the retry policy, journals the outcome, asks again. A saga resumed
from its journal after a crash therefore takes the decision it would have taken.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, runtime_checkable

from resilience_kit._checks import check_name
from resilience_kit.errors import ConfigurationError
from resilience_kit.policies._retry import RetryPolicy

__all__ = (
    "MemorySagaJournal",
    "Saga",
    "SagaJournal",
    "SagaMark",
    "SagaResult",
    "SagaStatus",
    "SagaStep",
    "saga_plan",
)

C = TypeVar("C")


class SagaMark(str, enum.Enum):
    """What the journal records about one step of one saga run."""

    DONE = "done"
    """The step's action succeeded."""
    FAILED = "failed"
    """The step's action gave up (its retries ran out): the saga compensates."""
    COMPENSATED = "compensated"
    """The step's compensation succeeded (or it has none)."""
    ABANDONED = "abandoned"
    """The step's compensation gave up: an operator must look at it."""


class SagaStatus(str, enum.Enum):
    """How a saga run ended."""

    COMPLETED = "completed"
    """Every step's action succeeded."""
    COMPENSATED = "compensated"
    """A step failed and every step done before it was compensated, in reverse order."""
    FAILED = "failed"
    """A step failed and at least one compensation gave up too."""


@dataclass(frozen=True, slots=True)
class SagaStep(Generic[C]):
    """One step of a saga: an action and the compensation that undoes it.

    Steps run at least once: a saga resumed after a crash between an action and its
    journal mark runs that action again, so actions and compensations must be
    idempotent (an upsert, a delete, a request with an idempotency key).

    Args:
        name: the step's name, unique in its saga (journal marks and results use it).
        action: ``async def action(context) -> None``; an exception means "failed".
        compensate: ``async def compensate(context) -> None`` undoing the action, or
            ``None`` when there is nothing to undo.
        retry: the retry policy of this step's action and compensation (default: the
            saga's).

    Examples:
        >>> async def reserve(order): order["reserved"] = True
        >>> SagaStep("reserve", reserve).name
        'reserve'
    """

    name: str
    action: Callable[[C], Awaitable[object]]
    compensate: Callable[[C], Awaitable[object]] | None = None
    retry: RetryPolicy | None = None


@dataclass(frozen=True, slots=True)
class SagaResult:
    """What one saga run did.

    Attributes:
        status: how it ended (`SagaStatus`).
        completed: the steps whose action succeeded, in order.
        failed_step: the step whose action gave up, if any.
        compensated: the steps compensated, in the order compensated (reverse).
        abandoned: the steps whose compensation gave up.
        error: the failed step's last error, as ``"Type: message"`` (``None`` if none
            or when resumed from a journal that did not keep it).

    Examples:
        >>> SagaResult(SagaStatus.COMPLETED, ("a", "b")).succeeded
        True
    """

    status: SagaStatus
    completed: tuple[str, ...] = ()
    failed_step: str | None = None
    compensated: tuple[str, ...] = ()
    abandoned: tuple[str, ...] = ()
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        """Whether every step completed."""
        return self.status is SagaStatus.COMPLETED


@runtime_checkable
class SagaJournal(Protocol):
    """Where a saga run's marks are kept, so that a resumed run continues where it was.

    Store it where the steps' own state lives (the service's database) so that a crash
    loses neither. Marks of one run come back in the order they were appended.
    """

    async def load(self, saga: str, run_id: str) -> Sequence[tuple[str, SagaMark]]:
        """The ``(step, mark)`` pairs appended for run ``run_id`` of saga ``saga``."""
        ...

    async def append(self, saga: str, run_id: str, step: str, mark: SagaMark) -> None:
        """Append one mark; it must be durable when this returns."""
        ...


class MemorySagaJournal:
    """A `SagaJournal` in this process's memory, for tests and single processes.

    Examples:
        >>> import anyio
        >>> journal = MemorySagaJournal()
        >>> anyio.run(journal.append, "purge", "org-1", "close", SagaMark.DONE)
        >>> anyio.run(journal.load, "purge", "org-1")
        [('close', <SagaMark.DONE: 'done'>)]
    """

    __slots__ = ("_runs",)

    def __init__(self) -> None:
        self._runs: dict[tuple[str, str], list[tuple[str, SagaMark]]] = {}

    def __repr__(self) -> str:
        return f"MemorySagaJournal({len(self._runs)} runs)"

    async def load(self, saga: str, run_id: str) -> list[tuple[str, SagaMark]]:
        """The marks of one run, in order."""
        return list(self._runs.get((saga, run_id), ()))

    async def append(self, saga: str, run_id: str, step: str, mark: SagaMark) -> None:
        """Append one mark."""
        self._runs.setdefault((saga, run_id), []).append((step, SagaMark(mark)))


# -- the pure core --------------------------------------------------------------------------


def saga_plan(
    steps: Sequence[str], marks: Sequence[tuple[str, SagaMark]]
) -> tuple[str, str] | SagaResult:
    """What a saga does next, given its steps and the marks of its run so far.

    Returns ``("act", step)`` (run that step's action), ``("undo", step)`` (run its
    compensation), or the `SagaResult` when the run is over. Forwards, the first step
    without a mark runs next; after a step failed, the steps done before it are undone
    from the last to the first; the run is over when every step is done, or when every
    done step is compensated or abandoned.

    Examples:
        >>> saga_plan(["a", "b"], [])
        ('act', 'a')
        >>> saga_plan(["a", "b"], [("a", SagaMark.DONE), ("b", SagaMark.FAILED)])
        ('undo', 'a')
        >>> saga_plan(["a", "b"], [("a", SagaMark.DONE), ("b", SagaMark.DONE)]).status
        <SagaStatus.COMPLETED: 'completed'>
    """
    done: list[str] = []
    failed: str | None = None
    compensated: list[str] = []
    abandoned: list[str] = []
    for step, mark in marks:
        if mark is SagaMark.DONE and failed is None and step not in done:
            done.append(step)
        elif mark is SagaMark.FAILED and failed is None:
            failed = step
        elif mark is SagaMark.COMPENSATED:
            compensated.append(step)
        elif mark is SagaMark.ABANDONED:
            abandoned.append(step)
    if failed is None:
        for step in steps:
            if step not in done:
                return ("act", step)
        return SagaResult(SagaStatus.COMPLETED, tuple(done))
    settled = set(compensated) | set(abandoned)
    for step in reversed(done):
        if step not in settled:
            return ("undo", step)
    return SagaResult(
        SagaStatus.FAILED if abandoned else SagaStatus.COMPENSATED,
        tuple(done),
        failed,
        tuple(compensated),
        tuple(abandoned),
    )


# -- the driver -----------------------------------------------------------------------------


class Saga(Generic[C]):
    """A sequence of steps that either all complete, or are undone in reverse order.

    `run` performs the steps' actions in order, each under its retry policy. When one
    gives up, the saga compensates every step done before it, from the last to the
    first (a compensation that gives up too is recorded as abandoned, and the others
    still run), and reports `SagaStatus.COMPENSATED` — or `SagaStatus.FAILED` when
    something could not be undone. With a `SagaJournal`, each outcome is journaled
    before the next step starts, and running the same ``run_id`` again resumes the run:
    a completed run returns its result without doing anything; an interrupted one
    continues forwards, or goes on compensating.

    Args:
        name: the saga's name (in the journal, and in reprs).
        steps: the `SagaStep`s, in order; names must be unique.
        retry: the retry policy for every step without its own (default: one attempt).
        journal: where marks are kept; ``None`` keeps them only for the run.

    Raises:
        ConfigurationError: no steps, duplicate step names, or a bad parameter.

    Examples:
        >>> import anyio
        >>> log = []
        >>> async def charge(order): log.append("charge")
        >>> async def refund(order): log.append("refund")
        >>> async def ship(order): raise ConnectionError("carrier down")
        >>> saga = Saga("checkout", [SagaStep("charge", charge, refund), SagaStep("ship", ship)])
        >>> result = anyio.run(saga.run, {"order": 1})
        >>> result.status, result.failed_step, result.compensated, log
        (<SagaStatus.COMPENSATED: 'compensated'>, 'ship', ('charge',), ['charge', 'refund'])
    """

    __slots__ = ("_by_name", "journal", "name", "retry", "steps")

    def __init__(
        self,
        name: str,
        steps: Sequence[SagaStep[C]],
        *,
        retry: RetryPolicy | None = None,
        journal: SagaJournal | None = None,
    ) -> None:
        self.name = check_name("name", name)
        self.steps = tuple(steps)
        if not self.steps:
            raise ConfigurationError("steps", "a saga needs at least one step")
        for step in self.steps:
            if not isinstance(step, SagaStep):
                raise ConfigurationError("steps", f"must be SagaStep objects, got {step!r}")
        self._by_name = {step.name: step for step in self.steps}
        if len(self._by_name) != len(self.steps):
            raise ConfigurationError("steps", "step names must be unique")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError("retry", f"must be a RetryPolicy or None, got {retry!r}")
        if journal is not None and not isinstance(journal, SagaJournal):
            raise ConfigurationError("journal", f"must implement SagaJournal, got {journal!r}")
        self.retry = retry if retry is not None else RetryPolicy(attempts=1)
        self.journal = journal

    def __repr__(self) -> str:
        return f"Saga({self.name!r}, steps={[step.name for step in self.steps]!r})"

    async def run(self, context: C, *, run_id: str | None = None) -> SagaResult:
        """Run (or resume, with a journal and ``run_id``) the saga on ``context``.

        Args:
            context: handed to every action and compensation.
            run_id: this run's id in the journal (an order id, an org id); required to
                resume, ignored without a journal.

        Raises:
            ConfigurationError: a journal without ``run_id``.
        """
        journal = self.journal
        if journal is not None and run_id is None:
            raise ConfigurationError("run_id", "a saga with a journal needs a run_id")
        marks: list[tuple[str, SagaMark]] = []
        if journal is not None and run_id is not None:
            marks = [(step, SagaMark(mark)) for step, mark in await journal.load(self.name, run_id)]
        names = [step.name for step in self.steps]
        error: str | None = None
        while True:
            decision = saga_plan(names, marks)
            if isinstance(decision, SagaResult):
                if error is not None:
                    return SagaResult(
                        decision.status,
                        decision.completed,
                        decision.failed_step,
                        decision.compensated,
                        decision.abandoned,
                        error,
                    )
                return decision
            kind, name = decision
            step = self._by_name[name]
            work = step.action if kind == "act" else step.compensate
            try:
                if work is not None:
                    await (step.retry or self.retry).acall(work, context)
            except Exception as exc:  # noqa: BLE001 - the step gave up: journaled, decided on
                if kind == "act":
                    error = f"{type(exc).__name__}: {exc}"
                mark = SagaMark.FAILED if kind == "act" else SagaMark.ABANDONED
            else:
                mark = SagaMark.DONE if kind == "act" else SagaMark.COMPENSATED
            if journal is not None and run_id is not None:
                await journal.append(self.name, run_id, name, mark)
            marks.append((name, mark))
