"""Event: the envelope's rules, its exact JSON round trip and its typed errors on bad input."""

from __future__ import annotations

import copy
import json
import math
import pickle
import uuid
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum, IntEnum
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilience_kit import ConfigurationError, ResilienceError
from resilience_kit.messaging import (
    Event,
    EventTooLargeError,
    InvalidEventError,
    MalformedEventError,
    _event,
)
from resilience_kit.testing import VirtualClock, use_clock

FIXED_ID = uuid.UUID("0190f1e2-7b3a-7c00-8000-000000000001")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
GOLDEN = (
    b'{"id":"0190f1e2-7b3a-7c00-8000-000000000001","type":"org.member_removed",'
    b'"key":"org:acme","payload":{"user":"ann","seats":3,"ratio":0.5,"tags":["a"],'
    b'"extra":null,"ok":true},"headers":{"traceparent":"00-1-2-01"},'
    b'"occurred_at":"2026-01-01T00:00:00Z","schema_version":2}'
)
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(PROPERTY, max_examples=300)
FIELDS = ("id", "type", "key", "payload", "headers", "occurred_at", "schema_version")


def make(**overrides: Any) -> Event:
    fields: dict[str, Any] = {"type": "org.member_removed", "key": "org:acme", "payload": {}}
    fields.update(overrides)
    return Event(**fields)


def golden_event() -> Event:
    return Event(
        id=FIXED_ID,
        type="org.member_removed",
        key="org:acme",
        payload={"user": "ann", "seats": 3, "ratio": 0.5, "tags": ["a"], "extra": None, "ok": True},
        headers={"traceparent": "00-1-2-01"},
        occurred_at=T0,
        schema_version=2,
    )


def wire(**overrides: Any) -> bytes:
    """The golden event's JSON with fields replaced (a value of ... removes the field)."""
    document = json.loads(GOLDEN)
    for name, value in overrides.items():
        if value is ...:
            del document[name]
        else:
            document[name] = value
    return json.dumps(document).encode()


def invalid(**overrides: Any) -> InvalidEventError:
    with pytest.raises(InvalidEventError) as caught:
        make(**overrides)
    assert type(caught.value) is InvalidEventError
    return caught.value


def malformed(data: Any, **kwargs: Any) -> MalformedEventError:
    with pytest.raises(MalformedEventError) as caught:
        Event.from_json(data, **kwargs)
    assert not isinstance(caught.value, pydantic.ValidationError)
    assert caught.value.__cause__ is None
    return caught.value


def same(a: object, b: object) -> bool:
    """Equal *and* of the same types all the way down (1 == 1.0 == True in Python)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)  # type: ignore[arg-type]
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# -- building events ------------------------------------------------------------------


def test_defaults() -> None:
    event = make()
    assert event.id.version == 7
    assert event.id.variant == uuid.RFC_4122
    assert event.headers == {}
    assert event.schema_version == 1
    assert event.occurred_at.tzinfo is timezone.utc
    assert abs(event.occurred_at - datetime.now(timezone.utc)) < timedelta(minutes=1)


def test_occurred_at_defaults_to_the_clock() -> None:
    clock = VirtualClock(wall=1_767_225_600.0)
    with use_clock(clock):
        assert make().occurred_at == T0
        clock.advance(90.5)
        assert make().occurred_at == T0 + timedelta(seconds=90.5)


def test_the_event_is_a_resilience_kit_name_and_frozen() -> None:
    event = make()
    assert Event.__module__ == "resilience_kit"
    assert repr(event).startswith("Event(id=UUID(")
    with pytest.raises(pydantic.ValidationError):
        event.key = "other"  # type: ignore[misc]
    assert event.key == "org:acme"


def test_equality_and_hash_follow_the_fields_and_the_id() -> None:
    a = make(id=FIXED_ID, occurred_at=T0, payload={"n": 1})
    b = make(id=FIXED_ID, occurred_at=T0, payload={"n": 1})
    c = make(id=FIXED_ID, occurred_at=T0, payload={"n": 2})
    assert a == b
    assert a != c
    assert hash(a) == hash(b) == hash(c) == hash(FIXED_ID)
    assert len({a, b, c}) == 2
    assert copy.deepcopy(a) == a


def test_the_event_keeps_its_own_copy_of_the_payload_and_headers() -> None:
    payload: dict[str, Any] = {"roles": ["admin"], "org": {"id": "acme"}}
    headers = {"x-request-id": "r1"}
    event = make(payload=payload, headers=headers)
    payload["roles"].append("owner")
    payload["org"]["id"] = "evil"
    headers["x-request-id"] = "r2"
    assert event.payload == {"roles": ["admin"], "org": {"id": "acme"}}
    assert event.headers == {"x-request-id": "r1"}


@pytest.mark.parametrize(
    "name",
    [
        "org.member_removed",
        "OrderPlaced",
        "billing.invoice-paid.v2",
        "a",
        "a.0",
        "x_y.Z-9",
        "a" * 255,
    ],
)
def test_valid_types(name: str) -> None:
    assert make(type=name).type == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "is not dotted names"),
        ("9lives", "is not dotted names"),
        (".org", "is not dotted names"),
        ("org.", "is not dotted names"),
        ("org..member", "is not dotted names"),
        ("org member", "is not dotted names"),
        ("org/member", "is not dotted names"),
        ("orgé", "is not dotted names"),
        ("a" * 256, "at most 255 characters, got 256"),
        (7, "Input should be a valid string"),
    ],
)
def test_invalid_types(name: object, problem: str) -> None:
    error = invalid(type=name)
    assert error.problems[0].startswith("type: ")
    assert problem in error.problems[0]


@pytest.mark.parametrize("key", ["org:acme", "a", "tenant/1 order/2", "ключ-🔑", "k" * 255])
def test_valid_keys(key: str) -> None:
    assert make(key=key).key == key


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "key: must not be empty"),
        ("k" * 256, "key: must be at most 255 characters, got 256"),
        ("a\x00b", "key: must not contain control characters or lone surrogates"),
        ("line\nbreak", "key: must not contain control characters or lone surrogates"),
        ("\x85", "key: must not contain control characters or lone surrogates"),
        ("\ud800", "key: must not contain control characters or lone surrogates"),
        (None, "key: Input should be a valid string"),
        (b"org", "key: Input should be a valid string"),
    ],
)
def test_invalid_keys(key: object, problem: str) -> None:
    assert invalid(key=key).problems == (problem,)


def test_the_key_is_required() -> None:
    with pytest.raises(InvalidEventError) as caught:
        Event(type="org.created", payload={})  # type: ignore[call-arg]
    assert caught.value.problems == ("key: Field required",)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"none": None, "yes": True, "no": False, "zero": 0, "neg": -1, "f": -0.0, "s": ""},
        {
            "big": 2**1024 - 1,
            "small": -(2**1024 - 1),
            "tiny": 5e-324,
            "huge": 1.7976931348623157e308,
        },
        {"nested": {"list": [1, [2, [3, {"deep": "é\x00\n"}]]]}},
        {"": "empty key", "ключ": "🔑"},
    ],
)
def test_json_payloads_are_kept_exactly(payload: dict[str, Any]) -> None:
    event = make(payload=payload)
    assert same(event.payload, payload)
    assert same(Event.from_json(event.to_json()).payload, payload)


class Color(Enum):
    RED = "red"


class Level(IntEnum):
    HIGH = 3


class Name(str):
    pass


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"tags": {"a"}}, "payload['tags']: a set is not a JSON value (use a list)"),
        ({"tags": frozenset()}, "payload['tags']: a frozenset is not a JSON value (use a list)"),
        ({"point": (1, 2)}, "payload['point']: a tuple is not a JSON value (use a list)"),
        ({"raw": b"\x00"}, "payload['raw']: a bytes is not a JSON value (decode it, or"),
        ({"raw": bytearray()}, "payload['raw']: a bytearray is not a JSON value (decode"),
        ({"x": math.nan}, "payload['x']: nan is not a JSON number"),
        ({"x": math.inf}, "payload['x']: inf is not a JSON number"),
        ({"x": -math.inf}, "payload['x']: -inf is not a JSON number"),
        ({"x": 2**1024}, "payload['x']: an int longer than 1024 bits"),
        ({"x": -(2**1024)}, "payload['x']: an int longer than 1024 bits"),
        ({"x": Decimal("1.5")}, "payload['x']: a Decimal is not a JSON value"),
        ({"at": T0}, "payload['at']: a datetime is not a JSON value (use an ISO 8601 str)"),
        ({"id": FIXED_ID}, "payload['id']: a UUID is not a JSON value (use a str)"),
        ({"c": Color.RED}, "payload['c']: a Color is not a JSON value (use its value)"),
        ({"level": Level.HIGH}, "payload['level']: a Level is not a JSON value (use its value)"),
        ({"name": Name("ann")}, "payload['name']: a Name is not a JSON value (use a plain str)"),
        ({"s": "\udc80"}, "payload['s']: a str with a lone surrogate cannot be encoded as UTF-8"),
        ({1: "one"}, "payload[1]: JSON object keys must be str, got a int"),
        ({"a": {None: 1}}, "payload['a'][None]: JSON object keys must be str, got a NoneType"),
        ({"\ud800": 1}, "payload['\\ud800']: a key with a lone surrogate cannot be encoded"),
        ({"a": [1, {"b": [0, object()]}]}, "payload['a'][1]['b'][1]: a object is not a JSON value"),
        ({"k" * 100: {1}}, "payload['kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...]: a set"),
        ([1, 2], "payload: must be a dict (a JSON object), got a list"),
        (None, "payload: must be a dict (a JSON object), got a NoneType"),
    ],
)
def test_non_json_payloads_are_refused_not_coerced(payload: Any, problem: str) -> None:
    error = invalid(payload=payload)
    assert len(error.problems) == 1
    assert error.problems[0].startswith(problem), error.problems[0]


def test_dict_and_list_subclasses_are_copied_into_plain_ones() -> None:
    class Items(list[int]):
        pass

    event = make(payload=OrderedDict(b=Items([1, 2]), a={}))
    assert same(event.payload, {"b": [1, 2], "a": {}})


def test_payload_nesting_is_limited() -> None:
    def nested(depth: int) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        for _ in range(depth - 1):
            payload = {"n": payload}
        return payload

    assert make(payload=nested(64)).to_json().count(b"{") == 66
    error = invalid(payload=nested(65))
    assert error.problems[0].endswith("nested deeper than 64 levels")
    loop: list[Any] = []
    loop.append(loop)
    assert invalid(payload={"loop": loop}).problems[0].endswith("nested deeper than 64 levels")


def test_headers_rules() -> None:
    headers = {"traceparent": "00-ab-cd-01", "x-request-id": "r1", "ce_type": "a.b", "v": ""}
    assert make(headers=headers).headers == headers
    for bad, problem in [
        ({"": "x"}, "headers: a header name must not be empty"),
        ({"h" * 256: "x"}, "headers: a header name must be at most 255 characters, got 256"),
        ({"a\x00": "x"}, "headers: a header name must not contain control characters"),
        ({"with space": "x"}, "headers: 'with space' is not a header name"),
        ({"x:y": "x"}, "headers: 'x:y' is not a header name"),
        (
            {"a": "x\r\nInjected: 1"},
            "headers: the value of 'a' must not contain control characters",
        ),
        ({"a": "\ud800"}, "headers: the value of 'a' must not contain control characters or lone"),
        ({"a": 1}, "headers.a: Input should be a valid string"),
        ({1: "a"}, "headers.1.[key]: Input should be a valid string"),
        (["a"], "headers: Input should be a valid dictionary"),
    ]:
        error = invalid(headers=bad)
        assert error.problems[0].startswith(problem), error.problems


def test_occurred_at_must_be_aware_and_is_stored_in_utc() -> None:
    error = invalid(occurred_at=datetime(2026, 1, 1))  # naive on purpose
    assert error.problems == (
        "occurred_at: must be timezone-aware (a naive datetime's instant is unknown)",
    )
    paris = datetime(2026, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    event = make(occurred_at=paris)
    assert event.occurred_at == T0 == paris
    assert event.occurred_at.tzinfo is timezone.utc
    assert invalid(occurred_at="2026-01-01T00:00:00Z").problems == (
        "occurred_at: Input should be a valid datetime",
    )
    early = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    assert invalid(occurred_at=early).problems == (
        "occurred_at: 0001-01-01T00:00:00+05:00 is out of range in UTC",
    )


@pytest.mark.parametrize(
    ("version", "problem"),
    [
        (0, "greater than or equal to 1"),
        (-1, "greater than or equal to 1"),
        (2**31, "less than or equal to 2147483647"),
        (True, "valid integer"),
        (1.0, "valid integer"),
        ("1", "valid integer"),
    ],
)
def test_schema_version_is_a_positive_int(version: object, problem: str) -> None:
    error = invalid(schema_version=version)
    assert error.problems[0].startswith("schema_version: ")
    assert problem in error.problems[0]
    assert make(schema_version=2**31 - 1).schema_version == 2**31 - 1


def test_nothing_is_coerced_and_nothing_extra_is_accepted() -> None:
    assert invalid(id=str(FIXED_ID)).problems == ("id: Input should be an instance of UUID",)
    assert invalid(priority=1).problems == ("priority: Extra inputs are not permitted",)


def test_every_problem_is_reported_at_once() -> None:
    error = invalid(type="", key="", payload={"x": {1}}, schema_version=0)
    assert [problem.split(":")[0] for problem in error.problems] == [
        "type",
        "key",
        "payload['x']",
        "schema_version",
    ]
    assert str(error).startswith("invalid event: type: ")
    assert isinstance(error, ValueError)
    assert isinstance(error, ResilienceError)
    assert not isinstance(error, pydantic.ValidationError)


# -- ids --------------------------------------------------------------------------------


def test_ids_are_unique_and_strictly_increasing() -> None:
    ids = [make().id for _ in range(2000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert {i.version for i in ids} == {7}


def test_ids_start_with_the_unix_millisecond() -> None:
    ids = _event._Ids(time_ns=lambda: 1_767_225_600_123_456_789)
    assert ids().int >> 80 == 1_767_225_600_123


def test_ids_keep_increasing_when_the_clock_steps_back_or_stands_still() -> None:
    now = [5_000_000_000]
    ids = _event._Ids(time_ns=lambda: now[0])
    first = ids()
    now[0] -= 3_000_000_000  # NTP stepped the clock back 3 s
    second = ids()
    third = ids()
    assert first < second < third
    assert first.int >> 80 == second.int >> 80 == 5000  # still in the last millisecond seen


def test_ids_move_to_the_next_millisecond_when_the_counter_runs_out() -> None:
    ids = _event._Ids(time_ns=lambda: 7_000_000)
    first = ids()
    ids._counter = (1 << 42) - 1
    second = ids()
    assert first < second
    assert second.int >> 80 == 8
    assert second.version == 7
    assert second.variant == uuid.RFC_4122


def test_a_reset_starts_a_fresh_sequence() -> None:
    now = [9_000_000]
    ids = _event._Ids(time_ns=lambda: now[0])
    ids()
    now[0] = 1_000_000
    ids.reset()  # what a forked child does
    assert ids().int >> 80 == 1


# -- to_json ----------------------------------------------------------------------------


def test_to_json_is_compact_utf8_with_every_field() -> None:
    assert golden_event().to_json() == GOLDEN
    data = make(payload={"s": "é€🔑\x00"}).to_json()
    assert "é€🔑".encode() in data
    assert b"\\u0000" in data
    assert list(json.loads(data)) == list(FIELDS)


def test_to_json_refuses_more_than_max_bytes() -> None:
    event = golden_event()
    assert event.to_json(max_bytes=len(GOLDEN)) == GOLDEN
    with pytest.raises(EventTooLargeError) as caught:
        event.to_json(max_bytes=len(GOLDEN) - 1)
    assert (caught.value.size, caught.value.max_bytes) == (len(GOLDEN), len(GOLDEN) - 1)
    assert isinstance(caught.value, InvalidEventError)
    big = make(payload={"blob": "x" * 1_048_576})
    with pytest.raises(EventTooLargeError):
        big.to_json()
    assert len(big.to_json(max_bytes=2_000_000)) > 1_048_576


@pytest.mark.parametrize("limit", [0, -1, True, 1.5, "1024", None])
def test_max_bytes_must_be_a_positive_int(limit: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        golden_event().to_json(max_bytes=limit)
    assert caught.value.parameter == "max_bytes"
    with pytest.raises(ConfigurationError):
        Event.from_json(GOLDEN, max_bytes=limit)


# -- from_json --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview, lambda data: data.decode()])
def test_from_json_reads_bytes_and_text(kind: Any) -> None:
    event = Event.from_json(kind(GOLDEN))
    assert event == golden_event()
    assert event.occurred_at.tzinfo is timezone.utc


def test_from_json_accepts_any_offset_and_whitespace() -> None:
    pretty = json.dumps(json.loads(wire(occurred_at="2026-01-01T05:30:00+05:30")), indent=2)
    event = Event.from_json(pretty)
    assert event.occurred_at == T0
    assert event.occurred_at.tzinfo is timezone.utc


def test_from_json_checks_the_size_before_parsing() -> None:
    with pytest.raises(EventTooLargeError) as caught:
        Event.from_json(b"not even json" * 10, max_bytes=100)
    assert caught.value.size == 130
    text = "é" * 60  # 120 bytes of UTF-8 in 60 characters
    with pytest.raises(EventTooLargeError) as caught:
        Event.from_json(text, max_bytes=100)
    assert caught.value.size == 120
    assert Event.from_json(GOLDEN, max_bytes=len(GOLDEN)) == golden_event()


@pytest.mark.parametrize("name", FIELDS)
def test_from_json_requires_every_field(name: str) -> None:
    # A decoded event must never get a fresh id (duplicates would go unrecognised) or
    # a fresh time: defaults are for building events, not for reading them.
    assert malformed(wire(**{name: ...})).problems == (f"{name}: Field required",)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "Invalid JSON: EOF while parsing a value at line 1 column 0"),
        (b"garbage", "Invalid JSON: expected value at line 1 column 1"),
        (GOLDEN[:-10], "Invalid JSON: EOF while parsing"),
        (b"\xff\xfe{}", "Invalid JSON"),
        (b"null", "Input should be an object"),
        (b"[]", "Input should be an object"),
        ("\ud800", "the text has a lone surrogate"),
        (None, "expected bytes or str, got NoneType"),
        (42, "expected bytes or str, got int"),
        ({"id": "x"}, "expected bytes or str, got dict"),
        (wire(extra=1), "extra: Extra inputs are not permitted"),
        (wire(id="nope"), "id: Input should be a valid UUID"),
        (wire(id=7), "id: UUID input should be a string"),
        (wire(type="9"), "type: '9' is not dotted names"),
        (wire(type=None), "type: Input should be a valid string"),
        (wire(key=""), "key: must not be empty"),
        (wire(key=["k"]), "key: Input should be a valid string"),
        (wire(payload=[]), "payload: must be a dict (a JSON object), got a list"),
        (wire(headers={"a": 1}), "headers.a: Input should be a valid string"),
        (wire(occurred_at="2026-01-01T00:00:00"), "occurred_at: must be timezone-aware"),
        (wire(occurred_at="yesterday"), "occurred_at: Input should be a valid datetime"),
        (wire(occurred_at="0001-01-01T00:00:00+01:00"), "occurred_at: 0001-01-01T00:00:00+01:00"),
        (wire(schema_version=1.0), "schema_version: Input should be a valid integer"),
        (wire(schema_version="1"), "schema_version: Input should be a valid integer"),
        (wire(schema_version=0), "schema_version: Input should be greater than or equal to 1"),
        (GOLDEN.replace(b'"ratio":0.5', b'"ratio":NaN'), "payload['ratio']: nan is not"),
        (GOLDEN.replace(b'"ratio":0.5', b'"ratio":-Infinity'), "payload['ratio']: -inf is not"),
        (GOLDEN.replace(b'"ratio":0.5', b'"ratio":1e400'), "payload['ratio']: inf is not"),
        (GOLDEN.replace(b'"seats":3', b'"seats":' + b"9" * 400), "payload['seats']: an int longer"),
        (
            GOLDEN.replace(b'"seats":3', b'"seats":' + b"9" * 5000),
            "Invalid JSON: number out of range",
        ),
        (GOLDEN.replace(b'"user":"ann"', b'"user":"\\ud800"'), "Invalid JSON"),
        (GOLDEN.replace(b"[", b"[" * 70).replace(b"]", b"]" * 70), "payload['tags'][0][0][0]"),
        (GOLDEN.replace(b"[", b"[" * 5000).replace(b"]", b"]" * 5000), "Invalid JSON: recursion"),
    ],
)
def test_from_json_raises_one_typed_error(data: Any, problem: str) -> None:
    error = malformed(data)
    assert any(line.startswith(problem) for line in error.problems), error.problems
    assert str(error).startswith("malformed event: ")
    assert isinstance(error, InvalidEventError)
    assert isinstance(error, ValueError)


def test_from_json_lets_a_repeated_key_s_last_value_win() -> None:
    data = GOLDEN.replace(b'"key":"org:acme"', b'"key":"org:first","key":"org:acme"')
    assert Event.from_json(data) == golden_event()


def test_an_event_inside_another_model_round_trips_through_json() -> None:
    class DeadLetter(pydantic.BaseModel):
        event: Event
        error: str

    letter = DeadLetter(event=golden_event(), error="boom")
    assert DeadLetter.model_validate_json(letter.model_dump_json()) == letter
    assert (
        DeadLetter.model_validate({"event": golden_event(), "error": "x"}).event.key == "org:acme"
    )


# -- with_headers -----------------------------------------------------------------------


def test_with_headers_returns_a_copy_with_merged_headers() -> None:
    event = golden_event()
    traced = event.with_headers({"x-request-id": "r1", "traceparent": "00-9-9-01"}, tenant="acme")
    assert traced.headers == {"traceparent": "00-9-9-01", "x-request-id": "r1", "tenant": "acme"}
    assert traced.model_dump(exclude={"headers"}) == event.model_dump(exclude={"headers"})
    assert event == golden_event()
    assert event.with_headers({"a": "1"}, a="2").headers["a"] == "2"
    assert event.with_headers() == event
    with pytest.raises(InvalidEventError) as caught:
        event.with_headers({"bad name": "x"})
    assert caught.value.problems[0].startswith("headers: 'bad name' is not a header name")


# -- the errors -------------------------------------------------------------------------


def test_the_errors_survive_copy_and_pickle() -> None:
    for error in (
        InvalidEventError(["key: must not be empty"]),
        MalformedEventError(["Invalid JSON"]),
        EventTooLargeError(size=10, max_bytes=5),
    ):
        for clone in (copy.copy(error), pickle.loads(pickle.dumps(error))):
            assert type(clone) is type(error)
            assert str(clone) == str(error)
            assert clone.problems == error.problems
    clone = pickle.loads(pickle.dumps(EventTooLargeError(size=10, max_bytes=5)))
    assert (clone.size, clone.max_bytes) == (10, 5)


# -- properties -------------------------------------------------------------------------

SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**1024 - 1), max_value=2**1024 - 1)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)
offsets = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
)
events = st.builds(
    Event,
    id=st.uuids(),
    type=st.from_regex(r"\A[A-Za-z][A-Za-z0-9_-]{0,15}(\.[A-Za-z0-9_-]{1,8}){0,3}\Z"),
    key=SAFE_TEXT.filter(bool),
    payload=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    headers=st.dictionaries(st.from_regex(r"\A[A-Za-z0-9._-]{1,20}\Z"), SAFE_TEXT, max_size=4),
    occurred_at=st.datetimes(
        min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=offsets
    ),
    schema_version=st.integers(min_value=1, max_value=2**31 - 1),
)


@PROPERTY
@given(events)
def test_round_trip_is_exact(event: Event) -> None:
    data = event.to_json()
    back = Event.from_json(data)
    assert back == event
    assert same(back.payload, event.payload)
    assert back.occurred_at.tzinfo is timezone.utc
    assert back.to_json() == data
    assert Event.from_json(data.decode()) == event


def check_decodes_or_refuses(data: bytes | str) -> None:
    try:
        event = Event.from_json(data)
    except InvalidEventError as exc:
        error: InvalidEventError | None = exc
    else:
        error = None
        assert Event.from_json(event.to_json()) == event
    if error is not None:
        assert not isinstance(error, pydantic.ValidationError)
        assert error.problems


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_the_typed_error(data: bytes) -> None:
    check_decodes_or_refuses(data)


@FUZZ
@given(st.text(max_size=300))
def test_random_text_decodes_or_raises_the_typed_error(data: str) -> None:
    check_decodes_or_refuses(data)


@PROPERTY
@given(events, st.data())
def test_damaged_events_decode_or_raise_the_typed_error(event: Event, data: st.DataObject) -> None:
    encoded = bytearray(event.to_json())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(encoded)))
        match data.draw(st.sampled_from(["delete", "insert", "replace"])):
            case "delete":
                del encoded[at : at + data.draw(st.integers(1, 8))]
            case "insert":
                encoded[at:at] = data.draw(st.binary(min_size=1, max_size=8))
            case _:
                encoded[at : at + 1] = data.draw(st.sampled_from([b'"', b"{", b"]", b"1", b","]))
    check_decodes_or_refuses(bytes(encoded))


@PROPERTY
@given(
    st.fixed_dictionaries(
        {},
        optional=dict.fromkeys(FIELDS, json_values)
        | {"id": st.uuids().map(str), "extra": json_values},
    )
)
def test_documents_with_random_field_values_decode_or_raise(document: dict[str, Any]) -> None:
    check_decodes_or_refuses(json.dumps(document))


def decoded_or_refused(data: bytes) -> object:
    try:
        event = Event.from_json(data)
    except InvalidEventError as exc:
        return type(exc), exc.problems
    return event, event.model_dump()


# Payload texts that reach every rule the full walk checks: surrogates escaped and raw,
# NaN and infinities, overflowing exponents, 1024-bit ints and longer, deep nesting.
risky_payloads = st.recursive(
    st.sampled_from(
        [
            "NaN",
            "-Infinity",
            "1e400",
            "1E+308",
            "2.5e-999",
            "1e30",
            '"\\ud800"',
            '"\\uDFFF"',
            '"\\u00e9"',
            '"9e123-x"',
            str(2**1024),
            str(2**1024 - 1),
            "0.1",
            "true",
            "null",
        ]
    ),
    lambda children: (
        st.lists(children, max_size=3).map(lambda items: f"[{','.join(items)}]")
        | st.lists(children, max_size=3).map(
            lambda items: "{" + ",".join(f'"k{n}":{item}' for n, item in enumerate(items)) + "}"
        )
    ),
    max_leaves=70,
)


@PROPERTY
@given(events, risky_payloads, st.integers(0, 70), st.data())
def test_decoding_without_the_payload_walk_decides_as_the_walk_does(
    event: Event, payload: str, depth: int, data: st.DataObject
) -> None:
    wrapped = "[" * depth + payload + "]" * depth
    document = data.draw(st.sampled_from([f'{{"p":{wrapped}}}', wrapped]))
    encoded = event.to_json()
    start = encoded.index(b'"payload":') + len(b'"payload":')
    end = encoded.index(b',"headers":')
    text = encoded[:start] + document.encode("utf-8", "surrogatepass") + encoded[end:]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_event, "_SCAN_FROM", 0)  # the scan for texts of any size
        fast = decoded_or_refused(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_event, "_plain_json", lambda raw: False)
        walked = decoded_or_refused(text)
    assert repr(fast) == repr(walked)
