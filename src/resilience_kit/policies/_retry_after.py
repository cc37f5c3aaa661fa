"""Retry-After: how long a server (or a breaker) asked the caller to wait.

Two sources, read in this order:

1. a ``retry_after`` attribute on the exception: seconds (``int``/``float``) or a
   `datetime.timedelta` — `CircuitOpenError` carries one;
2. the ``Retry-After`` header of the HTTP response the exception carries, in either
   form of RFC 9110 §10.2.3: delay-seconds (``"120"``) or an HTTP-date (IMF-fixdate,
   and the obsolete RFC 850 and asctime forms that recipients must accept).

HTTP clients are duck-typed, none is imported: ``exc.response.headers`` covers httpx's
`HTTPStatusError` and requests' `HTTPError`; ``exc.headers`` covers aiohttp's
`ClientResponseError`. Anything that cannot be read as a delay counts as no hint.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

__all__ = ("retry_after_hint",)


def retry_after_hint(exc: BaseException, *, now: float | None = None) -> float | None:
    """Read a server-given delay from an exception, in seconds, or ``None``.

    The exception's ``retry_after`` attribute wins; otherwise the ``Retry-After``
    header of the HTTP response it carries (httpx, requests and aiohttp exceptions,
    duck-typed) is read, as delay-seconds or as an HTTP-date. Negative delays and dates
    in the past count as zero; values that are not a usable delay (``bool``, NaN,
    infinity, text that is neither form) count as no hint.

    Args:
        exc: the exception an attempt raised.
        now: the wall time (Unix seconds) that an HTTP-date is measured from; the
            system's by default. `RetryPolicy` passes its clock's.

    Examples:
        >>> class Throttled(Exception):
        ...     retry_after = 2
        >>> retry_after_hint(Throttled())
        2.0
        >>> class Response:
        ...     headers = {"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}
        >>> class HTTPStatusError(Exception):
        ...     response = Response()
        >>> retry_after_hint(HTTPStatusError(), now=1445412480.0)  # 30 s before that date
        30.0
    """
    value = getattr(exc, "retry_after", None)
    if value is not None:
        return hint_seconds(value)
    return header_hint(exc, time.time if now is None else (lambda: now))


def hint_seconds(value: object) -> float | None:
    """A retry-after attribute as seconds >= 0, or ``None`` when it is not a usable number."""
    # A timedelta can only exist once datetime is imported: reading sys.modules keeps
    # `import resilience_kit` from paying for datetime (and email) up front.
    datetime_module = sys.modules.get("datetime")
    if datetime_module is not None and isinstance(value, datetime_module.timedelta):
        return max(0.0, float(value.total_seconds()))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float is no usable delay
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def header_hint(exc: BaseException, wall: Callable[[], float]) -> float | None:
    """The ``Retry-After`` header of the response an exception carries, as seconds."""
    try:
        response = getattr(exc, "response", None)
        headers = getattr(exc if response is None else response, "headers", None)
        get = getattr(headers, "get", None)
        raw = get("Retry-After") if callable(get) else None
    except Exception:  # noqa: BLE001 - a half-built exception must not break the retry
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("latin-1")
    if not isinstance(raw, str):
        return None
    return parse_retry_after(raw, wall)


def parse_retry_after(value: str, wall: Callable[[], float]) -> float | None:
    """Parse a ``Retry-After`` field value (RFC 9110 §10.2.3) as seconds from ``wall()``.

    Examples:
        >>> parse_retry_after("120", lambda: 0.0)
        120.0
        >>> parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", lambda: 30.0)
        30.0
        >>> parse_retry_after("soon", lambda: 0.0) is None
        True
    """
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():  # delay-seconds = 1*DIGIT
        # Past ~4,300 digits int() refuses the text; no such delay is meant anyway.
        return float(int(text)) if len(text) <= 15 else None
    # Imported here: an HTTP-date is rare, and email.utils costs ~30 ms at import.
    from datetime import datetime, timezone  # noqa: PLC0415
    from email.utils import parsedate_to_datetime  # noqa: PLC0415

    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:  # asctime carries no zone; HTTP dates are always GMT
        moment = moment.replace(tzinfo=timezone.utc)
    seconds = (moment - datetime.fromtimestamp(wall(), timezone.utc)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None
