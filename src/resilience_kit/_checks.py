"""Argument checks every layer shares, below everything but `errors`.

Policies, caching, messaging, security, stores, transports and testing all validate their
arguments here, so that one rule (a positive number, a name, what a policy can wrap)
reads the same and fails the same everywhere: at construction, with a message naming the
parameter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from resilience_kit.errors import ConfigurationError

__all__ = (
    "CONTROL_OR_SURROGATE",
    "NAME_MAX_LENGTH",
    "ExceptionFilter",
    "ExceptionTypes",
    "check_int",
    "check_name",
    "check_positive",
    "check_topic",
    "check_wrappable",
    "exception_matcher",
    "is_async_callable",
    "name_problem",
)

ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]
ExceptionFilter = ExceptionTypes | Callable[[BaseException], bool]

NAME_MAX_LENGTH = 255
"""Topic, consumer, key, event type and header names: indexable columns on every backend."""

# Control characters break text protocols and PostgreSQL text columns (NUL); lone
# surrogates cannot be encoded as UTF-8 at all.
CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def check_positive(parameter: str, value: float | None, *, allow_zero: bool = False) -> None:
    """Fail construction with a message naming ``parameter`` unless it is a positive number."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(parameter, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigurationError(parameter, f"must be finite, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(parameter, f"must be {bound}, got {value!r}")


def check_int(parameter: str, value: int, *, minimum: int) -> None:
    """Fail construction unless ``value`` is an int no smaller than ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(parameter, f"must be an int, got {value!r}")
    if value < minimum:
        raise ConfigurationError(parameter, f"must be >= {minimum}, got {value!r}")


def name_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a name (topic, key, header name), or None if nothing."""
    if not value:
        return "must not be empty"
    if len(value) > NAME_MAX_LENGTH:
        return f"must be at most {NAME_MAX_LENGTH} characters, got {len(value)}"
    if CONTROL_OR_SURROGATE.search(value):
        return "must not contain control characters or lone surrogates"
    return None


def check_name(parameter: str, value: object) -> str:
    """A topic, consumer or relay name: a non-empty str of at most 255 printable characters."""
    if not isinstance(value, str):
        raise ConfigurationError(parameter, f"must be a str, got {type(value).__name__}")
    problem = name_problem(value)
    if problem is not None:
        raise ConfigurationError(parameter, problem)
    return value


def check_topic(topic: object) -> str:
    """A topic name (see `check_name`)."""
    return check_name("topic", topic)


def is_async_callable(fn: object) -> bool:
    """Tell whether calling ``fn`` returns an awaitable we must await."""
    if _iscoroutinefunction(fn):
        return True
    # A callable object whose __call__ is async counts too.
    return _iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


def _first_iscoroutinefunction(fn: object) -> bool:
    """Bind `inspect.iscoroutinefunction` for `is_async_callable`, then act as it."""
    # `inspect` costs more to import than the rest of a policy's imports together, and
    # only runs once something is wrapped or called; later calls cost one global lookup.
    global _iscoroutinefunction  # noqa: PLW0603  (bound once, on first use)
    import inspect  # noqa: PLC0415  (deferred: see above)

    _iscoroutinefunction = inspect.iscoroutinefunction
    return inspect.iscoroutinefunction(fn)


_iscoroutinefunction: Callable[[object], bool] = _first_iscoroutinefunction


def check_wrappable(fn: object, policy: object) -> None:
    """Reject what a policy cannot wrap, at decoration time rather than on first call."""
    import inspect  # noqa: PLC0415  (deferred, see `_first_iscoroutinefunction`)

    if not callable(fn):
        raise TypeError(f"{policy!r} can only decorate a callable, got {fn!r}")
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"{policy!r} cannot decorate generator function {fn!r}: the policy would only "
            "guard the creation of the generator, not its iteration"
        )


def exception_matcher(value: ExceptionFilter, parameter: str) -> Callable[[BaseException], bool]:
    """Turn exception types or a predicate into one predicate, validating it."""
    if isinstance(value, type) and issubclass(value, BaseException):
        types: tuple[type[BaseException], ...] = (value,)
    elif isinstance(value, tuple):
        for item in value:
            if not (isinstance(item, type) and issubclass(item, BaseException)):
                raise ConfigurationError(parameter, f"expected exception types, got {item!r}")
        types = value
    elif isinstance(value, type):
        raise ConfigurationError(parameter, f"expected exception types, got {value!r}")
    elif callable(value):
        return value
    else:
        raise ConfigurationError(
            parameter, f"expected an exception type, a tuple of them or a predicate, got {value!r}"
        )

    def matches(exc: BaseException) -> bool:
        return isinstance(exc, types)

    return matches
