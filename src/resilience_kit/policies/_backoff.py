"""Backoff schedules: how long to wait before retry number *n*."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Literal

from resilience_kit._checks import check_positive
from resilience_kit.errors import ConfigurationError

Jitter = Literal["none", "full", "equal", "decorrelated"]
_JITTERS = ("none", "full", "equal", "decorrelated")


def _check_seconds(parameter: str, value: float, *, allow_zero: bool = True) -> None:
    """Like `check_positive`, but ``None`` is no default here: it is an error."""
    if value is None:
        raise ConfigurationError(parameter, "must be a number, got None")
    check_positive(parameter, value, allow_zero=allow_zero)


class Backoff:
    """An immutable backoff schedule; build one with a class method.

    `delay` is a pure function of the retry number, the previous delay (for
    decorrelated jitter) and a random source, so schedules can be tested as
    properties. Every delay lies in ``[0, maximum]``.

    Jitter modes (AWS architecture blog, "Exponential Backoff And Jitter"):

    - ``"none"``: exactly the base delay.
    - ``"full"``: uniform in ``[0, base]``.
    - ``"equal"``: uniform in ``[base / 2, base]``.
    - ``"decorrelated"``: uniform in ``[initial, min(maximum, 3 * previous)]``.

    Examples:
        >>> b = Backoff.exponential(initial=0.1, maximum=1.0, jitter="none")
        >>> [b.delay(n) for n in range(1, 6)]
        [0.1, 0.2, 0.4, 0.8, 1.0]
    """

    __slots__ = ("_initial", "_jitter", "_kind", "_maximum", "_multiplier", "_sequence", "_step")

    def __init__(
        self,
        kind: str,
        *,
        initial: float,
        step: float = 0.0,
        multiplier: float = 1.0,
        maximum: float,
        jitter: Jitter = "none",
        sequence: tuple[float, ...] = (),
    ) -> None:
        _check_seconds("initial", initial)
        _check_seconds("step", step)
        _check_seconds("maximum", maximum)
        _check_seconds("multiplier", multiplier, allow_zero=False)
        if multiplier < 1:
            raise ConfigurationError("multiplier", f"must be >= 1, got {multiplier!r}")
        if jitter not in _JITTERS:
            raise ConfigurationError("jitter", f"must be one of {_JITTERS}, got {jitter!r}")
        if maximum < initial:
            raise ConfigurationError(
                "maximum", f"must be >= initial ({initial!r}), got {maximum!r}"
            )
        self._kind = kind
        self._initial = float(initial)
        self._step = float(step)
        self._multiplier = float(multiplier)
        self._maximum = float(maximum)
        self._jitter = jitter
        self._sequence = sequence

    @classmethod
    def none(cls) -> Backoff:
        """Retry at once, with no delay (a zero delay never sleeps).

        Examples:
            >>> Backoff.none().delay(3)
            0.0
        """
        return cls("none", initial=0.0, maximum=0.0)

    @classmethod
    def constant(cls, delay: float, *, jitter: Jitter = "none") -> Backoff:
        """Wait the same ``delay`` before every retry.

        Examples:
            >>> Backoff.constant(0.5).delay(7)
            0.5
        """
        _check_seconds("delay", delay)
        return cls("constant", initial=delay, maximum=delay, jitter=jitter)

    @classmethod
    def linear(
        cls,
        *,
        initial: float = 0.1,
        step: float = 0.1,
        maximum: float = 30.0,
        jitter: Jitter = "none",
    ) -> Backoff:
        """Wait ``initial + step * (n - 1)``, capped at ``maximum``.

        Examples:
            >>> b = Backoff.linear(initial=1.0, step=0.5, maximum=2.0)
            >>> [b.delay(n) for n in (1, 2, 3, 4)]
            [1.0, 1.5, 2.0, 2.0]
        """
        return cls("linear", initial=initial, step=step, maximum=maximum, jitter=jitter)

    @classmethod
    def exponential(
        cls,
        *,
        initial: float = 0.1,
        multiplier: float = 2.0,
        maximum: float = 30.0,
        jitter: Jitter = "full",
    ) -> Backoff:
        """Wait ``initial * multiplier ** (n - 1)``, capped at ``maximum``, with jitter.

        Full jitter is the default: it spreads out clients that failed together.

        Examples:
            >>> b = Backoff.exponential(initial=1.0, maximum=10.0)
            >>> 0.0 <= b.delay(3) <= 4.0
            True
        """
        return cls(
            "exponential", initial=initial, multiplier=multiplier, maximum=maximum, jitter=jitter
        )

    @classmethod
    def fixed(cls, delays: Sequence[float]) -> Backoff:
        """Wait the given delays in order, repeating the last one.

        Examples:
            >>> b = Backoff.fixed([0.1, 1.0, 5.0])
            >>> [b.delay(n) for n in (1, 2, 3, 4)]
            [0.1, 1.0, 5.0, 5.0]
        """
        try:
            values = tuple(delays)
        except TypeError:
            raise ConfigurationError(
                "delays", f"must be a sequence of seconds, got {delays!r}"
            ) from None
        if not values:
            raise ConfigurationError("delays", "must not be empty")
        for value in values:
            _check_seconds("delays", value)
        return cls(
            "fixed", initial=min(values), maximum=max(values), sequence=tuple(map(float, values))
        )

    @property
    def maximum(self) -> float:
        """The largest delay this schedule ever returns."""
        return self._maximum

    def base(self, retry: int) -> float:
        """The delay before retry number ``retry`` (1-based) before jitter, capped.

        Examples:
            >>> Backoff.exponential(initial=1.0, maximum=100.0).base(4)
            8.0
        """
        if retry < 1:
            raise ValueError(f"retry numbers start at 1, got {retry}")
        kind = self._kind
        if kind == "exponential":
            if self._initial == 0.0 or self._multiplier == 1.0:
                # Constant schedules: a huge retry number must not overflow into the cap.
                value = self._initial
            else:
                try:
                    value = self._initial * self._multiplier ** (retry - 1)
                except OverflowError:  # a growing schedule passed the cap long ago
                    return self._maximum
        elif kind == "linear":
            if self._step == 0.0:
                value = self._initial
            else:
                try:
                    value = self._initial + self._step * (retry - 1)
                except OverflowError:  # retry too large for a float: far past the cap
                    return self._maximum
        elif kind == "fixed":
            value = self._sequence[min(retry, len(self._sequence)) - 1]
        else:  # constant and none
            value = self._initial
        return min(value, self._maximum) if math.isfinite(value) else self._maximum

    def delay(
        self,
        retry: int,
        previous: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """The delay before retry number ``retry`` (1-based), jitter applied.

        Args:
            retry: which retry this is; the first retry is 1.
            previous: the delay before the previous retry (decorrelated jitter uses it).
            rand: a source of floats in ``[0, 1)``; pass one for deterministic tests.

        Examples:
            >>> Backoff.exponential(initial=1.0, maximum=8.0, jitter="equal").delay(
            ...     3, rand=lambda: 0.0
            ... )
            2.0
        """
        jitter = self._jitter
        if jitter == "decorrelated":
            if retry < 1:
                raise ValueError(f"retry numbers start at 1, got {retry}")
            low = self._initial
            # Cap before drawing: a huge previous delay (a retry-after hint) cannot turn
            # the draw into inf or NaN, and every delay stays in [initial, maximum].
            high = min(self._maximum, max(low, 3.0 * (previous if previous is not None else low)))
            return min(high, low + (high - low) * rand())
        base = self.base(retry)
        if jitter == "none":
            return base
        if jitter == "full":
            return base * rand()
        return base / 2.0 + (base / 2.0) * rand()  # equal

    def __repr__(self) -> str:
        return (
            f"Backoff.{self._kind}(initial={self._initial}, maximum={self._maximum}, "
            f"jitter={self._jitter!r})"
        )
