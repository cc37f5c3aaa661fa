"""Retry-After out of the box: the attribute, the HTTP header in both RFC 9110 forms, the
exceptions of httpx, requests and aiohttp (duck-typed), and a user's own reader composed
with the built-in one."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience_kit import Backoff, CircuitOpenError, RetryPolicy
from resilience_kit.errors import BulkheadFullError, TimeoutExceededError
from resilience_kit.policies import retry_after_hint
from resilience_kit.testing import VirtualClock

NOW = 1_767_225_600.0  # the VirtualClock's default wall time at start: 2026-01-01T00:00:00Z


class Response:
    def __init__(self, headers: dict[str, Any]) -> None:
        self.headers = headers


class HTTPError(Exception):
    """Shaped like requests' HTTPError and httpx's HTTPStatusError: ``.response.headers``."""

    def __init__(self, retry_after: Any) -> None:
        super().__init__("429 Too Many Requests")
        self.response = Response({"Retry-After": retry_after})


class ClientResponseError(Exception):
    """Shaped like aiohttp's ClientResponseError: ``.headers`` on the exception itself."""

    def __init__(self, retry_after: str) -> None:
        super().__init__("503 Service Unavailable")
        self.status = 503
        self.headers = {"Retry-After": retry_after}


def http_date(seconds_after_now: float) -> str:
    return format_datetime(
        datetime.fromtimestamp(NOW + seconds_after_now, timezone.utc), usegmt=True
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        (b"3", 3.0),
        ("Thu, 01 Jan 2026 00:00:30 GMT", 30.0),  # IMF-fixdate
        ("Thursday, 01-Jan-26 00:01:00 GMT", 60.0),  # obsolete RFC 850
        ("Thu Jan  1 00:00:05 2026", 5.0),  # obsolete asctime, no zone: GMT
        ("Wed, 31 Dec 2025 23:00:00 GMT", 0.0),  # in the past: retry now
        ("-5", None),  # delay-seconds is 1*DIGIT
        ("1.5", None),
        ("soon", None),
        ("", None),
        ("9" * 5000, None),
        ("\u0661\u0662", None),  # Arabic-Indic digits are not DIGIT
        (None, None),
        (42, None),  # a header value is text; a number there is not one the server sent
    ],
)
def test_the_header_is_read_in_both_rfc_9110_forms(value: Any, expected: float | None) -> None:
    assert retry_after_hint(HTTPError(value), now=NOW) == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("9", 9.0), ("Thu, 01 Jan 2026 00:00:30 GMT", 30.0), ("x", None)]
)
def test_aiohttp_shaped_errors_carry_the_header_on_the_exception(
    value: str, expected: float | None
) -> None:
    assert retry_after_hint(ClientResponseError(value), now=NOW) == expected


def test_the_attribute_wins_over_the_header() -> None:
    exc = HTTPError("100")
    exc.retry_after = 2  # type: ignore[attr-defined]
    assert retry_after_hint(exc, now=NOW) == 2.0


def test_exceptions_without_a_response_or_with_a_broken_one_give_no_hint() -> None:
    class Broken(Exception):
        @property
        def response(self) -> Any:
            raise RuntimeError("the request was never sent")

    assert retry_after_hint(ValueError("x")) is None
    assert retry_after_hint(Broken()) is None
    none_response = HTTPError("1")
    none_response.response = None  # type: ignore[assignment]  # requests' RequestException
    assert retry_after_hint(none_response) is None


@given(st.integers(min_value=0, max_value=10**12))
def test_any_delay_seconds_reads_back_exactly(seconds: int) -> None:
    assert retry_after_hint(HTTPError(str(seconds)), now=NOW) == float(seconds)


@given(st.integers(min_value=-(10**6), max_value=10**8))
def test_any_http_date_reads_back_as_the_seconds_until_it(offset: int) -> None:
    assert retry_after_hint(HTTPError(http_date(offset)), now=NOW) == max(0.0, float(offset))


def throttled_then_ok(retry_after: str, *, status: int = 429) -> httpx.MockTransport:
    replies = iter([status, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        code = next(replies)
        headers = {"Retry-After": retry_after} if code != 200 else {}
        return httpx.Response(code, headers=headers, text="ok" if code == 200 else "slow down")

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("retry_after", ["12", http_date(12)])
def test_a_retry_waits_what_an_httpx_429_asks_for(retry_after: str) -> None:
    clock = VirtualClock()
    client = httpx.Client(transport=throttled_then_ok(retry_after), base_url="http://api")
    retry = RetryPolicy(
        attempts=3, on=httpx.HTTPStatusError, backoff=Backoff.constant(1.0), clock=clock
    )

    @retry
    def fetch() -> str:
        return client.get("/orders").raise_for_status().text

    assert fetch() == "ok"
    assert clock.sleeps == [12.0]


@pytest.mark.anyio
async def test_an_async_retry_waits_what_an_httpx_503_asks_for() -> None:
    clock = VirtualClock()
    transport = throttled_then_ok("30", status=503)
    retry = RetryPolicy(attempts=3, on=httpx.HTTPStatusError, clock=clock)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:

        @retry
        async def fetch() -> str:
            return (await client.get("/orders")).raise_for_status().text

        assert await fetch() == "ok"
    assert clock.sleeps[0] == 30.0


def test_requests_http_errors_are_read_too() -> None:
    requests = pytest.importorskip("requests")
    response = requests.Response()
    response.status_code = 429
    response.headers["Retry-After"] = "4"
    exc = requests.HTTPError(response=response)
    assert retry_after_hint(exc) == 4.0


def test_a_hint_above_max_retry_after_gives_up_at_once() -> None:
    clock = VirtualClock()
    calls: list[int] = []

    @RetryPolicy(attempts=5, on=HTTPError, max_retry_after=60.0, clock=clock)
    def fetch() -> None:
        calls.append(1)
        raise HTTPError("3600")

    with pytest.raises(HTTPError):
        fetch()
    assert calls == [1]
    assert clock.sleeps == []


def test_a_users_reader_composes_with_the_built_in_hint() -> None:
    clock = VirtualClock()
    errors = iter(
        [
            CircuitOpenError("billing", state="open", retry_after=7.0),  # built-in 7 > own 1
            HTTPError("2"),  # built-in 2 < own 5
            ConnectionError(),  # own only: 1
        ]
    )

    def own(exc: BaseException) -> float | None:
        if isinstance(exc, HTTPError):
            return 5.0
        return 1.0 if isinstance(exc, (CircuitOpenError, ConnectionError)) else None

    @RetryPolicy(attempts=4, on=Exception, backoff=Backoff.none(), retry_after=own, clock=clock)
    def call() -> str:
        error = next(errors, None)
        if error is not None:
            raise error
        return "ok"

    assert call() == "ok"
    assert clock.sleeps == [7.0, 5.0, 1.0]


def test_a_users_reader_may_return_a_timedelta() -> None:
    clock = VirtualClock()
    errors = iter([ConnectionError()])

    @RetryPolicy(
        attempts=2,
        on=ConnectionError,
        backoff=Backoff.none(),
        retry_after=lambda exc: timedelta(seconds=3),  # type: ignore[arg-type,return-value]
        clock=clock,
    )
    def call() -> str:
        error = next(errors, None)
        if error is not None:
            raise error
        return "ok"

    assert call() == "ok"
    assert clock.sleeps == [3.0]


def test_by_default_the_librarys_own_rejections_are_retried_like_any_failure() -> None:
    """The documented choice: `on=Exception` includes CircuitOpenError (waited out until
    the breaker's next probe), BulkheadFullError (load shed: retried after the backoff)
    and TimeoutExceededError (a per-attempt timeout inside the retry)."""
    clock = VirtualClock()
    errors = iter(
        [
            CircuitOpenError("billing", state="open", retry_after=30.0),
            BulkheadFullError("audit", max_concurrent=1, max_waiting=0),
            TimeoutExceededError("validate", seconds=2.0),
        ]
    )

    @RetryPolicy(attempts=4, backoff=Backoff.constant(0.5), clock=clock)
    def call() -> str:
        error = next(errors, None)
        if error is not None:
            raise error
        return "ok"

    assert call() == "ok"
    assert clock.sleeps == [30.0, 0.5, 0.5]


def test_naming_what_to_retry_leaves_the_librarys_rejections_out() -> None:
    clock = VirtualClock()

    @RetryPolicy(attempts=4, on=(ConnectionError, TimeoutError), clock=clock)
    def call() -> None:
        raise CircuitOpenError("billing", state="open", retry_after=30.0)

    with pytest.raises(CircuitOpenError):
        call()
    assert clock.sleeps == []


def test_the_async_driver_reads_headers_on_the_policys_wall_clock() -> None:
    clock = VirtualClock(wall=NOW)
    errors = iter([HTTPError(http_date(45))])

    @RetryPolicy(attempts=2, on=HTTPError, backoff=Backoff.none(), clock=clock)
    async def call() -> str:
        error = next(errors, None)
        if error is not None:
            raise error
        return "ok"

    assert anyio.run(call) == "ok"
    assert clock.sleeps == [45.0]
