"""RetryPolicy: run a call again when it fails with something transient."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from resilience_kit import _config, _telemetry
from resilience_kit._checks import ExceptionFilter, check_int, check_positive, exception_matcher
from resilience_kit.clock import Clock, resolve_clock
from resilience_kit.errors import ConfigurationError, RetryExhaustedError
from resilience_kit.policies._backoff import Backoff
from resilience_kit.policies._base import P, Policy, R
from resilience_kit.policies._budget import RetryBudget
from resilience_kit.policies._retry_after import header_hint, hint_seconds, retry_after_hint

_INFO = 20  # `logging.INFO`, without importing `logging` with the policy

StopReason = Literal["attempts", "deadline", "budget", "retry_after"]


class RetryEvent:
    """What a `RetryPolicy` hands its ``before_sleep`` hooks before each wait.

    Attributes:
        policy: the policy's name.
        attempt: the attempt that just failed (the first is 1).
        delay: seconds the policy will wait before the next attempt (0 in no-wait mode
            is still reported as planned).
        elapsed: seconds since the first attempt started (``0.0`` unless the policy
            has a deadline); in no-wait mode the skipped waits count as elapsed.
        exception: what the attempt raised, or ``None`` when a result was rejected.
        result: the rejected result, when ``exception`` is ``None``.
    """

    # A hand-written frozen record rather than a dataclass: `dataclasses` imports
    # `inspect`, which would double what ``from resilience_kit import RetryPolicy`` costs.
    __slots__ = ("attempt", "delay", "elapsed", "exception", "policy", "result")
    __match_args__ = ("policy", "attempt", "delay", "elapsed", "exception", "result")

    if TYPE_CHECKING:  # read-only for type checkers, as a frozen dataclass's fields are

        @property
        def policy(self) -> str: ...
        @property
        def attempt(self) -> int: ...
        @property
        def delay(self) -> float: ...
        @property
        def elapsed(self) -> float: ...
        @property
        def exception(self) -> BaseException | None: ...
        @property
        def result(self) -> Any: ...

    def __init__(  # noqa: PLR0917  (the record's fields, positional like a dataclass's)
        self,
        policy: str,
        attempt: int,
        delay: float,
        elapsed: float,
        exception: BaseException | None,
        result: Any = None,
    ) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "policy", policy)
        setattr_(self, "attempt", attempt)
        setattr_(self, "delay", delay)
        setattr_(self, "elapsed", elapsed)
        setattr_(self, "exception", exception)
        setattr_(self, "result", result)

    def _fields(self) -> tuple[Any, ...]:
        return (self.policy, self.attempt, self.delay, self.elapsed, self.exception, self.result)

    if not TYPE_CHECKING:  # type checkers see the read-only properties above instead

        def __setattr__(self, name: str, value: object) -> None:
            # The error a frozen dataclass raises, so that code written against one still works.
            from dataclasses import FrozenInstanceError  # noqa: PLC0415  (only on misuse)

            raise FrozenInstanceError(f"cannot assign to field {name!r}")

        def __delattr__(self, name: str) -> None:
            from dataclasses import FrozenInstanceError  # noqa: PLC0415  (only on misuse)

            raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RetryEvent) or other.__class__ is not self.__class__:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        values = ", ".join(
            f"{name}={value!r}"
            for name, value in zip(self.__match_args__, self._fields(), strict=True)
        )
        return f"{type(self).__qualname__}({values})"

    def __reduce__(self) -> tuple[type[RetryEvent], tuple[Any, ...]]:
        return (type(self), self._fields())


RetryHook = Callable[[RetryEvent], object]


def _resolve_hooks(hooks: RetryHook | Sequence[RetryHook] | None) -> tuple[RetryHook, ...]:
    if hooks is None:
        return ()
    if callable(hooks):
        return (hooks,)
    try:
        result = tuple(hooks)
    except TypeError:
        raise ConfigurationError(
            "before_sleep", f"expected a callable or a sequence of them, got {hooks!r}"
        ) from None
    for hook in result:
        if not callable(hook):
            raise ConfigurationError("before_sleep", f"hooks must be callable, got {hook!r}")
    return result


class RetryPolicy(Policy):
    """Retry a sync or async call on transient failures, with backoff and limits.

    The call is retried when it raises an exception matched by ``on`` (or returns a
    result ``retry_if_result`` rejects) until ``attempts`` or ``deadline`` runs out.
    Then the last exception propagates *unchanged*; `RetryExhaustedError` is raised only
    when the last result was rejected. Exceptions not matched by ``on``, and
    cancellation, `KeyboardInterrupt` and `SystemExit`, propagate at once.

    Args:
        attempts: the most attempts in total (the first call included); ``None``
            means no count limit, and then a ``deadline`` is required.
        deadline: a total time budget in seconds: no attempt starts after it, and no
            sleep runs past it. In no-wait mode the skipped waits still count against
            it, so a test makes as many attempts as production would.
        on: exception types to retry, or a predicate on the exception.
        retry_if_result: a predicate; when it returns ``True`` for a result, retry.
        backoff: the delay schedule (default: exponential, full jitter, 0.1 s to 30 s).
        budget: a `RetryBudget` shared with other policies to cap retries fleet-wide.
        before_sleep: hooks called with a `RetryEvent` before each wait.
        retry_after: an extra reader of server-given delays, returning seconds (or a
            `timedelta`) or ``None``. The built-in reading, `retry_after_hint` (the
            exception's ``retry_after`` attribute, else the ``Retry-After`` header of
            the HTTP response it carries), always applies; when both give a hint the
            longer wins. The wait is the larger of the hint and the backoff. ``None``
            turns hints off.
        max_retry_after: a hint longer than this makes the policy give up — the
            exception propagates at once — instead of parking the caller that long
            (``None``: no cap).
        clock: the clock to sleep on (the virtual clock in tests).
        rand: a random source for jitter (seeded ones make tests reproducible).
        name: a name for logs and metrics.

    Raises:
        ConfigurationError: for a bad parameter; the message names it.

    Examples:
        >>> from resilience_kit import Backoff, RetryPolicy
        >>> calls = []
        >>> @RetryPolicy(attempts=3, on=ConnectionError, backoff=Backoff.none())
        ... def flaky() -> str:
        ...     calls.append(1)
        ...     if len(calls) < 3:
        ...         raise ConnectionError("reset")
        ...     return "ok"
        >>> flaky(), len(calls)
        ('ok', 3)
    """

    __slots__ = (
        "_attempts",
        "_attributes",
        "_backoff",
        "_budget",
        "_clock",
        "_deadline",
        "_hooks",
        "_matches",
        "_max_retry_after",
        "_rand",
        "_retry_after",
        "_retry_if_result",
        "name",
    )

    def __init__(
        self,
        *,
        attempts: int | None = 3,
        deadline: float | None = None,
        on: ExceptionFilter = Exception,
        retry_if_result: Callable[[Any], bool] | None = None,
        backoff: Backoff | None = None,
        budget: RetryBudget | None = None,
        before_sleep: RetryHook | Sequence[RetryHook] | None = None,
        retry_after: Callable[[BaseException], float | None] | None = retry_after_hint,
        max_retry_after: float | None = 300.0,
        clock: Clock | None = None,
        rand: Callable[[], float] | None = None,
        name: str | None = None,
    ) -> None:
        if attempts is None:
            if deadline is None:
                raise ConfigurationError(
                    "attempts", "None (unlimited) needs a deadline; retrying forever is unsafe"
                )
        else:
            check_int("attempts", attempts, minimum=1)
        check_positive("deadline", deadline)
        check_positive("max_retry_after", max_retry_after, allow_zero=True)
        if backoff is not None and not isinstance(backoff, Backoff):
            raise ConfigurationError("backoff", f"must be a Backoff, got {backoff!r}")
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigurationError("budget", f"must be a RetryBudget, got {budget!r}")
        if retry_if_result is not None and not callable(retry_if_result):
            raise ConfigurationError("retry_if_result", "must be a callable")
        if retry_after is not None and not callable(retry_after):
            raise ConfigurationError("retry_after", f"must be a callable, got {retry_after!r}")
        if rand is not None and not callable(rand):
            raise ConfigurationError("rand", f"must be a callable, got {rand!r}")
        if isinstance(on, type) and not issubclass(on, BaseException):
            # A class is callable, so it would otherwise pass for a predicate.
            raise ConfigurationError("on", f"expected exception types, got {on!r}")
        self._attempts = attempts
        self._deadline = deadline
        self._matches = exception_matcher(on, "on")
        self._retry_if_result = retry_if_result
        self._backoff = backoff if backoff is not None else Backoff.exponential()
        self._budget = budget
        self._hooks = _resolve_hooks(before_sleep)
        self._retry_after = retry_after
        self._attributes: dict[type[object], dict[str, str]] = {}
        self._max_retry_after = max_retry_after
        self._clock = clock
        self._rand = rand or random.random
        self.name = name or "retry"

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(name={self.name!r}, attempts={self._attempts}, "
            f"deadline={self._deadline}, backoff={self._backoff!r})"
        )

    # -- the one decision core, shared by every driver -------------------------------

    def _start(self) -> float:
        """Begin a call: count it in the budget; return its start time if one is needed."""
        if self._budget is not None:
            self._budget.record_call()
        if self._deadline is not None:
            return resolve_clock(self._clock).monotonic()
        return 0.0

    def _retryable(self, exc: BaseException) -> bool:
        # Cancellation, KeyboardInterrupt and SystemExit are BaseException only: never retried.
        return isinstance(exc, Exception) and self._matches(exc)

    def _next_delay(
        self,
        attempt: int,
        started: float,
        previous: float | None,
        exc: BaseException | None,
        result: Any = None,
    ) -> float | None:
        """Decide after a failed attempt: the delay before the next one, or ``None``."""
        reason: StopReason | None = None
        delay = 0.0
        elapsed = 0.0
        if self._attempts is not None and attempt >= self._attempts:
            reason = "attempts"
        else:
            backoff = self._backoff
            delay = backoff.delay(attempt, previous, self._rand) if backoff.maximum else 0.0
            extract = self._retry_after
            if exc is None or extract is None:
                hint = None
            else:
                # The built-in reading (retry_after_hint, inlined: most errors carry
                # none), then the user's own: the longer wait wins, so a custom reader
                # never drops what a CircuitOpenError or a 429's header asked for.
                raw = getattr(exc, "retry_after", None)
                if raw is not None:
                    hint = hint_seconds(raw)
                else:
                    hint = header_hint(exc, resolve_clock(self._clock).time)
                if extract is not retry_after_hint:
                    own = hint_seconds(extract(exc))
                    if own is not None and (hint is None or own > hint):
                        hint = own
            if hint is not None:
                if self._max_retry_after is not None and hint > self._max_retry_after:
                    reason = "retry_after"
                delay = max(delay, hint)
            if reason is None and self._deadline is not None:
                elapsed = resolve_clock(self._clock).monotonic() - started
                if elapsed + delay >= self._deadline:
                    reason = "deadline"
            if reason is None and self._budget is not None and not self._budget.try_spend():
                reason = "budget"
        if reason is not None:
            self._gave_up(attempt, reason, exc)
            return None
        kind = type(exc)
        attributes = self._attributes.get(kind)
        if attributes is None:
            attributes = {"policy": self.name, "outcome": "retry", "reason": _error_name(exc)}
            if len(self._attributes) < 64:  # a bounded cache: error types are few
                self._attributes[kind] = attributes
        _telemetry.emit(_telemetry.RETRY_ATTEMPTS, attributes)
        logger = _telemetry.logger
        if logger.isEnabledFor(_INFO):
            logger.info(
                "retry %r: attempt %d failed (%s); retrying in %.3fs",
                self.name,
                attempt,
                attributes["reason"],
                delay,
            )
        if self._hooks:
            event = RetryEvent(self.name, attempt, delay, elapsed, exc, result)
            for hook in self._hooks:
                hook(event)
        return delay

    def _gave_up(self, attempt: int, reason: StopReason, exc: BaseException | None) -> None:
        _telemetry.emit(
            _telemetry.RETRY_ATTEMPTS,
            {"policy": self.name, "outcome": "gave_up", "reason": reason},
        )
        _telemetry.logger.warning(
            "retry %r: giving up after %d attempt(s) (%s): %s",
            self.name,
            attempt,
            reason,
            _error_name(exc),
        )

    # -- drivers ------------------------------------------------------------------------

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        retry_if_result = self._retry_if_result
        matches = self._matches
        next_delay = self._next_delay
        timed = self._budget is not None or self._deadline is not None

        def retrying(*args: P.args, **kwargs: P.kwargs) -> R:
            started = self._start() if timed else 0.0
            attempt = 1
            delay: float | None = None
            while True:
                try:
                    result = fn(*args, **kwargs)
                except Exception as exc:  # cancellation & co. are BaseException: never retried
                    if not matches(exc):
                        raise
                    delay = next_delay(attempt, started, delay, exc)
                    if delay is None:
                        raise
                else:
                    if retry_if_result is None or not retry_if_result(result):
                        return result
                    delay = next_delay(attempt, started, delay, None, result)
                    if delay is None:
                        raise RetryExhaustedError(attempts=attempt, last_result=result)
                if delay > 0.0:
                    if _config.state.no_wait:
                        started -= delay  # a skipped wait still counts against the deadline
                    else:
                        resolve_clock(self._clock).sleep(delay)
                attempt += 1

        return retrying

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        retry_if_result = self._retry_if_result
        matches = self._matches
        next_delay = self._next_delay
        timed = self._budget is not None or self._deadline is not None

        async def retrying(*args: P.args, **kwargs: P.kwargs) -> R:
            started = self._start() if timed else 0.0
            attempt = 1
            delay: float | None = None
            while True:
                try:
                    result = await fn(*args, **kwargs)
                except Exception as exc:  # cancellation & co. are BaseException: never retried
                    if not matches(exc):
                        raise
                    delay = next_delay(attempt, started, delay, exc)
                    if delay is None:
                        raise
                else:
                    if retry_if_result is None or not retry_if_result(result):
                        return result
                    delay = next_delay(attempt, started, delay, None, result)
                    if delay is None:
                        raise RetryExhaustedError(attempts=attempt, last_result=result)
                if delay > 0.0:
                    if _config.state.no_wait:
                        started -= delay  # a skipped wait still counts against the deadline
                    else:
                        await resolve_clock(self._clock).asleep(delay)
                attempt += 1

        return retrying

    def attempts(self) -> Attempts:
        """Retry a block of code: iterate, and run each attempt inside ``with attempt:``.

        Works with ``for`` in sync code and ``async for`` in async code. A retryable
        exception inside the block is swallowed and the loop goes on after the delay;
        otherwise it propagates. After a success the loop ends.

        Examples:
            >>> from resilience_kit import Backoff, RetryPolicy
            >>> retry = RetryPolicy(attempts=3, on=KeyError, backoff=Backoff.none())
            >>> seen = []
            >>> for attempt in retry.attempts():
            ...     with attempt:
            ...         seen.append(attempt.number)
            ...         if attempt.number < 2:
            ...             raise KeyError("not yet")
            >>> seen
            [1, 2]
        """
        return Attempts(self)


def _error_name(exc: BaseException | None) -> str:
    return "result" if exc is None else type(exc).__qualname__


class Attempt:
    """One attempt of a block retried with `RetryPolicy.attempts`; use it with ``with``.

    Attributes:
        number: which attempt this is; the first is 1.
    """

    __slots__ = ("_owner", "_result", "entered", "number")

    def __init__(self, owner: Attempts, number: int) -> None:
        self._owner = owner
        self.number = number
        self.entered = False
        self._result: Any = None

    def set_result(self, value: Any) -> None:
        """Hand the block's result to the policy's ``retry_if_result`` predicate."""
        self._result = value

    def __enter__(self) -> Attempt:
        self.entered = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self._owner._finish(self, exc)


class Attempts:
    """The iterator `RetryPolicy.attempts` returns; iterate it with ``for`` or ``async for``."""

    __slots__ = ("_delay", "_done", "_last", "_policy", "_started")

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._started = 0.0
        self._last: Attempt | None = None
        self._delay: float | None = None
        self._done = False

    def _finish(self, attempt: Attempt, exc: BaseException | None) -> bool:
        """Record an attempt's outcome; ``True`` swallows its exception to retry."""
        policy = self._policy
        if exc is None:
            check = policy._retry_if_result
            if check is None or not check(attempt._result):
                self._done = True
                return False
            delay = policy._next_delay(
                attempt.number, self._started, self._delay, None, attempt._result
            )
            if delay is None:
                self._done = True
                raise RetryExhaustedError(attempts=attempt.number, last_result=attempt._result)
            self._delay = delay
            return False
        if not policy._retryable(exc):
            self._done = True
            return False
        delay = policy._next_delay(attempt.number, self._started, self._delay, exc)
        if delay is None:
            self._done = True
            return False
        self._delay = delay
        return True

    def _next_attempt(self) -> tuple[Attempt | None, float]:
        """The next attempt (``None`` when done) and how long to sleep before it."""
        last = self._last
        if last is None:
            self._started = self._policy._start()
            self._last = Attempt(self, 1)
            return self._last, 0.0
        if self._done or not last.entered:
            return None, 0.0
        self._last = Attempt(self, last.number + 1)
        delay = self._delay or 0.0
        if delay > 0.0 and _config.state.no_wait:
            self._started -= delay  # a skipped wait still counts against the deadline
            delay = 0.0
        return self._last, delay

    def __iter__(self) -> Attempts:
        return self

    def __next__(self) -> Attempt:
        attempt, delay = self._next_attempt()
        if attempt is None:
            raise StopIteration
        if delay > 0.0:
            resolve_clock(self._policy._clock).sleep(delay)
        return attempt

    def __aiter__(self) -> Attempts:
        return self

    async def __anext__(self) -> Attempt:
        attempt, delay = self._next_attempt()
        if attempt is None:
            raise StopAsyncIteration
        if delay > 0.0:
            await resolve_clock(self._policy._clock).asleep(delay)
        return attempt
