"""The idempotency state machine against a plain model, driven by hypothesis.

One machine drives the in-memory store directly (claim, complete, release, get, purge,
time passing) and, on other keys, @idempotent calls that succeed, fail, fail with a
stored failure, or find a crashed call's claim. The model is a dict of plain records
and a few lines of rules; it shares no code with the implementation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from anyio.from_thread import start_blocking_portal
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from resilience_kit.errors import IdempotencyConflictError, IdempotencyInProgressError
from resilience_kit.messaging import idempotent
from resilience_kit.messaging._guard import scoped_key
from resilience_kit.stores.memory._idempotency import MemoryIdempotencyStore
from resilience_kit.testing import VirtualClock

T = TypeVar("T")

STORE_KEYS = st.sampled_from(["s1", "s2"])
FINGERPRINTS = st.sampled_from(["f1", "f2"])
TOKENS = st.sampled_from(["t1", "t2"])
DURATIONS = st.sampled_from([-1.0, 0.0, 5.0, 30.0])
CALL_KEYS = st.sampled_from(["a", "b"])
ARGS = st.sampled_from([1, 2])
LOCK_FOR = 10.0
TTL = 20.0
NAME = "prop"


class Stored(Exception):
    """A failure the decorated function stores."""


@dataclass
class Entry:
    fingerprint: str
    status: str
    token: str
    result: Any
    expires_at: float


class IdempotencyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # One event loop for the whole run: a step is a call into it.
        self._portal_context = start_blocking_portal()
        self.portal = self._portal_context.__enter__()
        self.clock = VirtualClock(start=0.0)
        self.store = MemoryIdempotencyStore(self.clock)
        self.model: dict[str, Entry] = {}
        self.latest: dict[str, str] = {}  # the token of each key's last winning claim
        self.runs = 0
        self.expected_runs = 0

        @idempotent(
            self.store,
            key="key",
            name=NAME,
            ttl=TTL,
            lock_for=LOCK_FOR,
            on_in_progress="raise",
            store_failures=(Stored,),
            fingerprint=lambda key, arg, fail: f"{key}-{arg}",  # how it ends is no part
        )
        async def work(key: str, arg: int, fail: str) -> str:
            self.runs += 1
            if fail == "plain":
                raise ValueError(f"{key}-{arg}")
            if fail == "stored":
                raise Stored(f"{key}-{arg}")
            return f"{key}-{arg}-{self.runs}"

        self.work = work

    def teardown(self) -> None:
        self._portal_context.__exit__(None, None, None)

    def run(self, function: Callable[[], Awaitable[T]]) -> T:
        return self.portal.call(function)

    # -- the model -----------------------------------------------------------------------

    def live(self, key: str) -> Entry | None:
        entry = self.model.get(key)
        return None if entry is None or entry.expires_at <= self.clock.monotonic() else entry

    def owned(self, key: str, token: str) -> Entry | None:
        entry = self.live(key)
        if entry is None or entry.status != "in_progress" or entry.token != token:
            return None
        return entry

    # -- the store -----------------------------------------------------------------------

    @rule(key=STORE_KEYS, fingerprint=FINGERPRINTS, token=TOKENS, lock_for=DURATIONS)
    def claim(self, key: str, fingerprint: str, token: str, lock_for: float) -> None:
        record = self.run(
            lambda: self.store.claim(key, fingerprint, token=token, lock_for=lock_for)
        )
        now = self.clock.monotonic()
        entry = self.live(key)
        if entry is None:
            self.latest[key] = token
            entry = Entry(fingerprint, "in_progress", token, None, now + lock_for)
            if lock_for > 0:
                self.model[key] = entry
            else:
                self.model.pop(key, None)
        assert (record.fingerprint, record.status, record.token, record.result) == (
            entry.fingerprint,
            entry.status,
            entry.token,
            entry.result,
        )
        assert record.expires_in == entry.expires_at - now

    @rule(key=STORE_KEYS, token=TOKENS, result=st.binary(max_size=4), ttl=DURATIONS)
    def complete(self, key: str, token: str, result: bytes, ttl: float) -> None:
        done = self.run(lambda: self.store.complete(key, token=token, result=result, ttl=ttl))
        entry = self.owned(key, token)
        assert done == (entry is not None)
        if entry is not None:
            entry.status, entry.result = "completed", result
            entry.expires_at = self.clock.monotonic() + ttl
            if ttl <= 0:
                del self.model[key]

    @rule(
        key=STORE_KEYS,
        result=st.binary(max_size=4),
        ttl=DURATIONS,
        release=st.booleans(),
        late=st.sampled_from([0.0, 4.0, 30.0]),
    )
    def finish_latest_claim(
        self, key: str, result: bytes, ttl: float, release: bool, late: float
    ) -> None:
        """Complete or release as the last claimer of ``key``, perhaps after its lock."""
        self.clock.advance(late)
        token = self.latest.get(key, "t1")
        if release:
            self.release(key, token)
        else:
            self.complete(key, token, result, ttl)

    @rule(key=STORE_KEYS, token=TOKENS)
    def release(self, key: str, token: str) -> None:
        released = self.run(lambda: self.store.release(key, token=token))
        assert released == (self.owned(key, token) is not None)
        if released:
            del self.model[key]

    @rule(key=STORE_KEYS)
    def get(self, key: str) -> None:
        record = self.run(lambda: self.store.get(key))
        entry = self.live(key)
        if entry is None:
            assert record is None
        else:
            assert record is not None
            assert (record.fingerprint, record.status, record.token, record.result) == (
                entry.fingerprint,
                entry.status,
                entry.token,
                entry.result,
            )

    @rule()
    def purge(self) -> None:
        purged = self.run(self.store.purge_expired)
        expired = [key for key in self.model if self.live(key) is None]
        assert purged == len(expired)
        for key in expired:
            del self.model[key]

    @rule(seconds=st.sampled_from([0.5, 5.0, 10.0, 25.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # -- the decorator -------------------------------------------------------------------

    @rule(key=CALL_KEYS, arg=ARGS, fail=st.sampled_from(["none", "none", "plain", "stored"]))
    def call(self, key: str, arg: int, fail: str) -> None:
        stored_key = scoped_key(NAME, None, key)
        entry = self.live(stored_key)
        try:
            outcome: object = self.run(lambda: self.work(key, arg, fail))
        except (ValueError, Stored, IdempotencyConflictError, IdempotencyInProgressError) as exc:
            outcome = exc
        now = self.clock.monotonic()
        if entry is None:  # runs
            self.expected_runs += 1
            if fail == "plain":  # released
                assert type(outcome) is ValueError
                self.model.pop(stored_key, None)
                return
            result: object = (
                Stored(f"{key}-{arg}") if fail == "stored" else f"{key}-{arg}-{self.runs}"
            )
            self.model[stored_key] = Entry(str(arg), "completed", "call", result, now + TTL)
            entry = self.model[stored_key]
        elif entry.fingerprint != str(arg):
            assert isinstance(outcome, IdempotencyConflictError)
            return
        elif entry.status == "in_progress":
            assert isinstance(outcome, IdempotencyInProgressError)
            assert outcome.retry_after == entry.expires_at - now
            return
        if isinstance(entry.result, Stored):  # first run or replay: the stored failure
            assert type(outcome) is Stored
            assert outcome.args == entry.result.args
        else:
            assert outcome == entry.result

    @rule(key=CALL_KEYS, arg=ARGS)
    def crash(self, key: str, arg: int) -> None:
        """A call that claimed the key and died: its claim holds until lock_for passes."""
        stored_key = scoped_key(NAME, None, key)
        digest = hashlib.sha256(f"{key}-{arg}".encode()).hexdigest()
        record = self.run(
            lambda: self.store.claim(stored_key, digest, token="crashed", lock_for=LOCK_FOR)
        )
        if self.live(stored_key) is None:
            assert record.token == "crashed"
            self.model[stored_key] = Entry(
                str(arg), "in_progress", "crashed", None, self.clock.monotonic() + LOCK_FOR
            )

    @invariant()
    def the_function_ran_exactly_when_the_model_says(self) -> None:
        assert self.runs == self.expected_runs


IdempotencyMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None, report_multiple_bugs=False
)
TestIdempotencyMachine = IdempotencyMachine.TestCase
