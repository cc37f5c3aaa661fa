"""The ``resilience-kit`` command line, driven through `main` against real stores."""

from __future__ import annotations

import doctest
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest

from resilience_kit import cli
from resilience_kit._cli import format as _cli_format
from resilience_kit._cli import parser as _cli_parser
from resilience_kit._cli.commands import COMMANDS
from resilience_kit._cli.console import Console
from resilience_kit._cli.format import describe_filter, duration, moment, safe
from resilience_kit._cli.parser import build_parser
from resilience_kit.cli import main
from resilience_kit.messaging import DeadLetter, DeadLetterFilter, Event, Outbox
from resilience_kit.stores import _url
from resilience_kit.stores.memory import MemoryStore
from resilience_kit.stores.sqlite import SQLiteStore

START = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No store from the environment, and no terminal width: tables are not cut."""
    monkeypatch.delenv("RESILIENCE_KIT_STORE", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)


def make_letter(
    *,
    topic: str = "billing",
    event_type: str | None = "invoice.paid",
    error: BaseException | None = None,
    source: str = "consumer:mailer",
    minutes: int = 0,
    data: bytes | None = None,
) -> DeadLetter:
    """A dead letter with a real traceback; ``event_type=None`` makes a poison message."""
    if data is None:
        data = (
            b"\xff\x00not an event"
            if event_type is None
            else Event(type=event_type, key="inv:1", payload={"amount": 12}).to_json()
        )
    try:
        raise error or TimeoutError("smtp timed out")
    except BaseException as exc:
        caught = exc
    return DeadLetter.create(
        source=source,
        topic=topic,
        data=data,
        error=caught,
        attempts=3,
        now=START + timedelta(minutes=minutes),
    )


def put(store: Any, *letters: DeadLetter) -> None:
    async def put_all() -> None:
        for letter in letters:
            await store.dead_letters.put(letter)

    anyio.run(put_all)


def count(store: Any, where: DeadLetterFilter | None = None) -> int:
    return anyio.run(store.dead_letters.count, where or DeadLetterFilter())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "app.db")
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def url(sqlite_store: SQLiteStore) -> str:
    return f"sqlite:///{sqlite_store.path}"  # an absolute path: four slashes


def add_events(store: SQLiteStore, *keys: str) -> None:
    connection = store.connect()
    try:
        with connection:
            for key in keys:
                event = Event(type="org.created", key=key, payload={})
                Outbox(store.outbox, topic="orgs").add(connection, event)
    finally:
        connection.close()


# -- dead-letters list ------------------------------------------------------------------------


def test_list_prints_a_table_of_matching_letters(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    first, second = make_letter(), make_letter(topic="orgs", error=ValueError("bad org"))
    put(sqlite_store, first, second, make_letter(event_type=None, minutes=1))
    code, out, err = run(capsys, "dead-letters", "list", "--store", url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "DEAD-LETTERED",
        "(UTC)",
        "SOURCE",
        "TOPIC",
        "TYPE",
        "ERROR",
        "ATTEMPTS",
        "MESSAGE",
    ]
    assert len(lines) == 4
    assert str(first.id) in lines[1]
    assert "2026-01-05 09:00:00" in lines[1]
    assert "TimeoutError" in lines[1]
    assert "smtp timed out" in lines[1]
    assert "(poison)" in lines[3]

    code, out, _ = run(capsys, "dead-letters", "list", "--store", url, "--error", "ValueError")
    assert code == 0
    assert str(second.id) in out
    assert str(first.id) not in out


def test_list_json_gives_full_records(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    letter, poison = make_letter(), make_letter(event_type=None, minutes=1)
    put(sqlite_store, letter, poison)
    code, out, _ = run(capsys, "dead-letters", "list", "--store", url, "--json")
    assert code == 0
    document = json.loads(out)
    assert document["next_after"] is None
    event_record, poison_record = document["dead_letters"]
    assert event_record["id"] == str(letter.id)
    assert event_record["error_type"] == "builtins.TimeoutError"
    assert event_record["data_encoding"] == "utf-8"
    assert event_record["event"]["payload"] == {"amount": 12}
    assert event_record["event_type"] == "invoice.paid"
    assert event_record["dead_lettered_at"] == "2026-01-05T09:00:00+00:00"
    assert "TimeoutError: smtp timed out" in event_record["traceback"]
    assert poison_record["event"] is None
    assert poison_record["data_encoding"] == "base64"
    assert poison_record["data"] == "/wBub3QgYW4gZXZlbnQ="


def test_list_filters_by_time_type_and_source(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    early = make_letter(minutes=0)
    late = make_letter(minutes=30, event_type="invoice.voided", source="outbox")
    put(sqlite_store, early, late)

    def ids(*extra: str) -> list[str]:
        code, out, err = run(capsys, "dead-letters", "list", "--store", url, "--json", *extra)
        assert code == 0, err
        return [record["id"] for record in json.loads(out)["dead_letters"]]

    assert ids("--since", "2026-01-05T09:10Z") == [str(late.id)]
    assert ids("--until", "2026-01-05 09:10") == [str(early.id)]  # naive: UTC
    assert ids("--since", "2026-01-05T10:05+01:00") == [str(late.id)]
    assert ids("--type", "invoice.voided") == [str(late.id)]
    assert ids("--source", "consumer:mailer") == [str(early.id)]
    assert ids("--topic", "elsewhere") == []
    assert ids("--since", "1h") == []  # both are far older than an hour


def test_list_pages_with_limit_and_after(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    letters = [make_letter(minutes=minute) for minute in range(5)]
    put(sqlite_store, *letters)
    code, out, _ = run(capsys, "dead-letters", "list", "--store", url, "--limit", "2", "--json")
    assert code == 0
    page = json.loads(out)
    assert [record["id"] for record in page["dead_letters"]] == [str(x.id) for x in letters[:2]]
    assert page["next_after"] == str(letters[1].id)

    code, out, err = run(
        capsys,
        "dead-letters",
        "list",
        "--store",
        url,
        "--limit",
        "2",
        "--after",
        str(letters[1].id),
    )
    assert code == 0
    assert str(letters[2].id) in out
    assert str(letters[3].id) in out
    assert str(letters[4].id) not in out
    assert f"--after {letters[3].id}" in err  # how to get the next page, off stdout


def test_list_with_nothing_to_show(capsys: pytest.CaptureFixture[str], url: str) -> None:
    assert run(capsys, "dead-letters", "list", "--store", url) == (0, "no dead letters\n", "")
    code, out, _ = run(capsys, "dead-letters", "list", "--store", url, "--topic", "orgs")
    assert (code, out) == (0, "no dead letters match topic=orgs\n")


def test_list_fits_the_terminal_width(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sqlite_store: SQLiteStore,
    url: str,
) -> None:
    letter = make_letter(
        topic="a-rather-long-topic-name", error=RuntimeError("a long message " * 20)
    )
    put(sqlite_store, letter)
    code, out, _ = run(capsys, "dead-letters", "list", "--store", url)
    assert code == 0
    assert max(len(line) for line in out.splitlines()) > 300  # piped: nothing is cut

    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = run(capsys, "dead-letters", "list", "--store", url)
    assert code == 0
    assert all(len(line) <= 120 for line in out.splitlines())
    assert str(letter.id) in out  # the id is never cut: `show` needs it
    assert "…" in out


def test_stored_control_characters_are_escaped(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    letter = make_letter(error=ValueError("\x1b[2Jwiped \x1b]0;title\x07 \u202egnp.exe"))
    put(sqlite_store, letter)
    for command in (["list"], ["show", str(letter.id)]):
        code, out, _ = run(capsys, "dead-letters", *command, "--store", url)
        assert code == 0
        assert "\x1b" not in out
        assert "\x07" not in out
        assert "\u202e" not in out  # a right-to-left override would disguise the text
        assert "\\x1b[2Jwiped" in out
        assert "\\u202egnp.exe" in out
    code, out, _ = run(capsys, "dead-letters", "list", "--store", url, "--json")
    assert code == 0
    assert out.isascii()
    assert json.loads(out)["dead_letters"][0]["error_message"].endswith("\u202egnp.exe")


# -- dead-letters show ------------------------------------------------------------------------


def test_show_prints_every_field_traceback_and_event(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    letter = make_letter(error=ConnectionError("broker down\nretry later"))
    put(sqlite_store, letter)
    code, out, err = run(capsys, "dead-letters", "show", str(letter.id), "--store", url)
    assert code == 0, err
    assert f"id             {letter.id}" in out
    assert "source         consumer:mailer" in out
    assert "error type     builtins.ConnectionError" in out
    assert "error message  broker down" in out
    assert "  retry later" in out  # the whole message, indented
    assert "attempts       3" in out
    assert "dead-lettered  2026-01-05T09:00:00+00:00" in out
    assert "traceback:\n  Traceback (most recent call last):" in out
    assert '"payload": {\n    "amount": 12\n  }' in out  # pretty-printed

    code, out, _ = run(capsys, "dead-letters", "show", str(letter.id), "--store", url, "--json")
    assert code == 0
    record = json.loads(out)
    assert record["id"] == str(letter.id)
    assert record["error_message"] == "broker down\nretry later"
    assert record["event"]["type"] == "invoice.paid"


def test_show_a_poison_message(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    binary, text = make_letter(event_type=None), make_letter(data=b"{not json")
    put(sqlite_store, binary, text)
    code, out, _ = run(capsys, "dead-letters", "show", str(binary.id), "--store", url)
    assert code == 0
    assert "poison" in out
    assert "data (14 bytes, base64):\n  /wBub3QgYW4gZXZlbnQ=" in out
    code, out, _ = run(capsys, "dead-letters", "show", str(text.id), "--store", url)
    assert "data (9 bytes, utf-8):\n  {not json" in out


def test_show_an_unknown_id_fails(capsys: pytest.CaptureFixture[str], url: str) -> None:
    missing = uuid.uuid4()
    code, out, err = run(capsys, "dead-letters", "show", str(missing), "--store", url)
    assert (code, out) == (1, "")
    assert err == f"resilience-kit: error: no dead letter with id {missing}\n"


def test_show_a_bad_id_is_a_usage_error(capsys: pytest.CaptureFixture[str], url: str) -> None:
    code, _, err = run(capsys, "dead-letters", "show", "42", "--store", url)
    assert code == 2
    assert "not a dead letter id (a UUID): '42'" in err
    assert err.count("\n") == 1


def test_a_corrupted_record_is_reported_and_kept(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    good, bad = make_letter(), make_letter(minutes=1)
    put(sqlite_store, good, bad)
    with sqlite3.connect(sqlite_store.path) as connection:
        connection.execute(
            "UPDATE rk_dead_letters SET attempts = 'many' WHERE id = ?", (str(bad.id),)
        )
    connection.close()

    code, out, err = run(capsys, "dead-letters", "show", str(bad.id), "--store", url)
    assert (code, out) == (1, "")
    assert err.startswith(f"resilience-kit: error: dead letter {bad.id} is corrupted")
    assert "Traceback" not in err

    code, out, err = run(capsys, "dead-letters", "list", "--store", url)
    assert code == 0
    assert str(good.id) in out  # one bad row hides nothing else
    assert str(bad.id) not in out
    assert err.startswith("resilience-kit: warning: ")  # but the operator is told
    assert str(bad.id) in err
    assert count(sqlite_store) == 2  # and nothing was deleted


# -- dead-letters replay ----------------------------------------------------------------------


def test_replay_into_the_outbox(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    letters = [make_letter(minutes=minute) for minute in range(3)]
    poison = make_letter(event_type=None, minutes=5)
    other = make_letter(topic="orgs", minutes=6)
    put(sqlite_store, *letters, poison, other)
    code, out, err = run(
        capsys, "dead-letters", "replay", "--store", url, "--topic", "billing", "--to", "outbox"
    )
    assert code == 0, err
    assert "replayed 3 to outbox (each to its own topic)" in out
    assert "skipped 1 poison message" in out
    assert anyio.run(sqlite_store.outbox.status).pending == 3
    remaining = anyio.run(sqlite_store.dead_letters.list, DeadLetterFilter())
    assert {letter.id for letter in remaining} == {poison.id, other.id}


def test_replay_to_another_topic_with_a_limit_as_json(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    letters = [make_letter(minutes=minute) for minute in range(3)]
    put(sqlite_store, *letters)
    code, out, _ = run(
        capsys,
        "dead-letters",
        "replay",
        "--store",
        url,
        "--to",
        "outbox",
        "--to-topic",
        "billing.retry",
        "--limit",
        "2",
        "--per-second",
        "1000",
        "--json",
    )
    assert code == 0
    report = json.loads(out)
    assert report == {
        "dry_run": False,
        "replayed": [str(letter.id) for letter in letters[:2]],
        "skipped": [],
        "failed": [],
    }
    claimed = anyio.run(lambda: sqlite_store.outbox.claim(limit=10, lease_for=30.0))
    assert {message.topic for message in claimed} == {"billing.retry"}
    assert count(sqlite_store) == 1


def test_replay_by_id(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    letters = [make_letter(minutes=minute) for minute in range(3)]
    put(sqlite_store, *letters)
    chosen = [str(letters[0].id), str(letters[2].id)]
    code, out, _ = run(
        capsys, "dead-letters", "replay", "--store", url, "--to", "outbox", "--id", *chosen
    )
    assert code == 0
    assert "replayed 2" in out
    assert [
        letter.id for letter in anyio.run(sqlite_store.dead_letters.list, DeadLetterFilter())
    ] == [letters[1].id]


def test_replay_dry_run_changes_nothing(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    letters = [make_letter(minutes=minute) for minute in range(3)]
    poison = make_letter(event_type=None, minutes=1)
    put(sqlite_store, *letters, poison)
    code, out, _ = run(
        capsys, "dead-letters", "replay", "--store", url, "--to", "outbox", "--dry-run"
    )
    assert code == 0
    assert all(str(letter.id) in out for letter in letters)
    assert "dry run: would replay 3 dead letters to outbox" in out
    assert "would skip 1 poison message; nothing was changed" in out
    code, out, _ = run(
        capsys,
        "dead-letters",
        "replay",
        "--store",
        url,
        "--to",
        "outbox",
        "--dry-run",
        "--limit",
        "1",
        "--json",
    )
    assert code == 0
    document = json.loads(out)
    assert document["dry_run"] is True
    assert [record["id"] for record in document["would_replay"]] == [str(letters[0].id)]
    assert count(sqlite_store) == 4
    assert anyio.run(sqlite_store.outbox.status).pending == 0


def test_replay_failures_are_reported_and_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemoryStore()
    letter = make_letter()
    put(store, letter)

    class Broken:
        async def publish(self, topic: str, event: Event) -> None:
            raise ConnectionError("broker down")

    monkeypatch.setattr(cli, "open_store", lambda url, **_: store)
    monkeypatch.setattr(
        "resilience_kit._cli.commands.open_publisher", lambda target, store: Broken()
    )
    code, out, _ = run(capsys, "dead-letters", "replay", "--store", "memory://", "--to", "outbox")
    assert code == 1
    assert "replayed 0" in out
    assert f"failed 1 (left in place):\n  {letter.id}: ConnectionError: broker down" in out
    assert count(store) == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--to", "kafka://broker"], "--to takes 'outbox' or a redis:// URL"),
        (["--to", "redis://:s3cret@cache/db"], "database number"),
        (["--to", "outbox", "--to-topic", "bad\ntopic"], "control characters"),
        (["--to", "outbox", "--per-second", "fast"], "expected a number of messages > 0"),
        (["--to", "outbox", "--per-second", "inf"], "expected a number of messages > 0"),
        ([], "the following arguments are required: --to"),
    ],
)
def test_replay_with_bad_arguments(
    capsys: pytest.CaptureFixture[str], url: str, arguments: list[str], message: str
) -> None:
    code, out, err = run(capsys, "dead-letters", "replay", "--store", url, *arguments)
    assert (code, out) == (2, "")
    assert message in err
    assert "s3cret" not in err


# -- dead-letters purge -----------------------------------------------------------------------


class Terminal(io.StringIO):
    """A stdin that is a terminal, with the operator's answer typed in."""

    def isatty(self) -> bool:
        return True


def test_purge_refuses_an_empty_filter(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    put(sqlite_store, make_letter())
    code, out, err = run(capsys, "dead-letters", "purge", "--store", url, "--yes")
    assert (code, out) == (2, "")
    assert "refusing to purge every dead letter: give a filter, or --all" in err
    code, _, err = run(capsys, "dead-letters", "purge", "--store", url, "--all", "--topic", "x")
    assert code == 2
    assert "cannot be combined with filters" in err
    assert count(sqlite_store) == 1


def test_purge_without_a_terminal_needs_yes(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sqlite_store: SQLiteStore,
    url: str,
) -> None:
    put(sqlite_store, make_letter())
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # piped: not a person
    code, out, err = run(capsys, "dead-letters", "purge", "--store", url, "--topic", "billing")
    assert (code, out) == (2, "")
    assert err == (
        "resilience-kit: error: refusing to purge without confirmation: stdin is not a"
        " terminal; pass --yes\n"
    )
    assert count(sqlite_store) == 1


def test_purge_with_yes_deletes_matching_letters(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    put(sqlite_store, make_letter(), make_letter(topic="orgs"))
    code, out, _ = run(capsys, "dead-letters", "purge", "--store", url, "--topic", "orgs", "--yes")
    assert (code, out) == (0, "purged 1 dead letter\n")
    assert count(sqlite_store) == 1
    code, out, _ = run(capsys, "dead-letters", "purge", "--store", url, "--all", "--yes", "--json")
    assert code == 0
    assert json.loads(out) == {"purged": 1}
    assert count(sqlite_store) == 0


def test_purge_asks_on_a_terminal(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sqlite_store: SQLiteStore,
    url: str,
) -> None:
    put(sqlite_store, make_letter(), make_letter(), make_letter(topic="orgs"))
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    code, out, err = run(capsys, "dead-letters", "purge", "--store", url, "--topic", "billing")
    assert (code, out) == (1, "")
    assert "Purge 2 dead letters (topic=billing) for good? [y/N]" in err
    assert "aborted: nothing was purged" in err
    assert count(sqlite_store) == 3

    monkeypatch.setattr(sys, "stdin", Terminal(""))  # end of input is not a yes
    assert run(capsys, "dead-letters", "purge", "--store", url, "--topic", "billing")[0] == 1
    assert count(sqlite_store) == 3

    monkeypatch.setattr(sys, "stdin", Terminal("yes\n"))
    code, out, _ = run(capsys, "dead-letters", "purge", "--store", url, "--topic", "billing")
    assert (code, out) == (0, "purged 2 dead letters\n")
    assert count(sqlite_store) == 1

    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    code, out, err = run(capsys, "dead-letters", "purge", "--store", url, "--topic", "billing")
    assert (code, out) == (0, "nothing to purge: no dead letters match topic=billing\n")
    assert "[y/N]" not in err  # nothing to ask about


# -- outbox -----------------------------------------------------------------------------------


def test_outbox_status(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    add_events(sqlite_store, "org:1", "org:2", "org:3")

    async def block_one_publish_one() -> None:
        first, second, _ = await sqlite_store.outbox.claim(limit=3, lease_for=30.0)
        await sqlite_store.outbox.block(first, error="broker refused")
        await sqlite_store.outbox.mark_published([second])

    code, _, err = run(capsys, "outbox", "status", "--store", url)
    assert code == 0
    assert "blocked" not in err  # nothing blocked: nothing to point at
    anyio.run(block_one_publish_one)
    code, out, err = run(capsys, "outbox", "status", "--store", url)
    assert code == 0
    assert out.splitlines()[:5] == [
        "pending    0",
        "leased     1",
        "blocked    1",
        "published  1",
        "backlog    1",
    ]
    assert out.splitlines()[5].startswith("lag        ")
    assert "1 blocked row hold back their keys" in err
    assert "resilience-kit outbox blocked" in err

    code, out, err = run(capsys, "outbox", "status", "--store", url, "--json")
    assert err == ""
    status = json.loads(out)
    assert {key: status[key] for key in ("pending", "leased", "blocked", "published")} == {
        "pending": 0,
        "leased": 1,
        "blocked": 1,
        "published": 1,
    }
    assert status["backlog"] == 1
    assert status["lag_seconds"] >= 0


def block_rows(store: SQLiteStore, *errors: str) -> list[int]:
    """Claim one row per key and block them with these errors; return their positions."""

    async def block() -> list[int]:
        claimed = await store.outbox.claim(limit=len(errors), lease_for=30.0)
        for message, error in zip(claimed, errors, strict=True):
            assert await store.outbox.block(message, error=error)
        return [message.position for message in claimed]

    return anyio.run(block)


def test_outbox_blocked_lists_the_blocked_rows(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    add_events(sqlite_store, "org:1", "org:2", "org:3")
    first, second = block_rows(
        sqlite_store, "ConnectionError: broker down\nat line 2", "ValueError: poison"
    )
    code, out, err = run(capsys, "outbox", "blocked", "--store", url)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == [
        "POSITION",
        "KEY",
        "TOPIC",
        "TYPE",
        "ATTEMPTS",
        "FIRST",
        "FAILED",
        "(UTC)",
        "LAST",
        "ERROR",
    ]
    assert len(lines) == 3
    assert lines[1].split()[:5] == [str(first), "org:1", "orgs", "org.created", "1"]
    assert lines[1].endswith("ConnectionError: broker down")  # the first line only
    assert lines[2].split()[:2] == [str(second), "org:2"]

    code, out, _ = run(capsys, "outbox", "blocked", "--store", url, "--json")
    assert code == 0
    document = json.loads(out)
    assert document["next_after"] is None
    one, two = document["blocked"]
    assert one["position"] == first
    assert (one["key"], one["topic"], one["event_type"]) == ("org:1", "orgs", "org.created")
    assert one["attempts"] == 1
    assert one["last_error"] == "ConnectionError: broker down\nat line 2"
    assert one["first_failed_at"] is not None  # blocked at its first failure: recorded
    assert datetime.fromisoformat(one["created_at"]).utcoffset() == timedelta(0)
    assert str(uuid.UUID(one["event_id"])) == one["event_id"]
    assert two["position"] == second
    assert two["last_error"] == "ValueError: poison"
    assert one["event_id"] != two["event_id"]


def test_outbox_blocked_pages_with_limit_and_after(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    add_events(sqlite_store, "a", "b", "c")
    positions = block_rows(sqlite_store, "x", "y", "z")
    code, out, err = run(capsys, "outbox", "blocked", "--store", url, "--limit", "2")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == [str(p) for p in positions[:2]]
    assert f"showing the first 2; for more: --after {positions[1]}" in err

    code, out, _ = run(capsys, "outbox", "blocked", "--store", url, "--limit", "2", "--json")
    page = json.loads(out)
    assert [row["position"] for row in page["blocked"]] == positions[:2]
    assert page["next_after"] == positions[1]
    code, out, _ = run(
        capsys, "outbox", "blocked", "--store", url, "--json", "--after", str(page["next_after"])
    )
    page = json.loads(out)
    assert [row["position"] for row in page["blocked"]] == positions[2:]
    assert page["next_after"] is None
    code, out, _ = run(capsys, "outbox", "blocked", "--store", url, "--after", str(positions[2]))
    assert (code, out) == (0, "no more blocked rows\n")

    code, _, err = run(capsys, "outbox", "blocked", "--store", url, "--after", "-1")
    assert code == 2
    assert "argument --after: expected an outbox position" in err


def test_outbox_blocked_with_nothing_blocked(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    add_events(sqlite_store, "org:1")  # pending, not blocked
    code, out, err = run(capsys, "outbox", "blocked", "--store", url)
    assert (code, out, err) == (0, "no blocked rows\n", "")
    code, out, _ = run(capsys, "outbox", "blocked", "--store", url, "--json")
    assert code == 0
    assert json.loads(out) == {"blocked": [], "next_after": None}


def test_outbox_blocked_shows_a_corrupted_row(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    add_events(sqlite_store, "org:1")
    [position] = block_rows(sqlite_store, "corrupted row: \x1b[31m")
    connection = sqlite3.connect(sqlite_store.path)
    with connection:
        connection.execute("UPDATE rk_outbox SET event_id = x'00', created_at = 'soon'")
    connection.close()
    code, out, _ = run(capsys, "outbox", "blocked", "--store", url, "--json")
    assert code == 0
    [row] = json.loads(out)["blocked"]
    assert row["position"] == position
    assert row["event_id"] is None
    assert row["created_at"] == "1970-01-01T00:00:00+00:00"
    code, out, _ = run(capsys, "outbox", "blocked", "--store", url)
    assert code == 0
    assert "\\x1b[31m" in out  # escaped, never raw
    assert "\x1b" not in out


def test_outbox_replay_requeues_blocked_and_published_rows(
    capsys: pytest.CaptureFixture[str], sqlite_store: SQLiteStore, url: str
) -> None:
    add_events(sqlite_store, "org:1", "org:2", "org:3")

    async def block_two_publish_one() -> list[int]:
        first, second, third = await sqlite_store.outbox.claim(limit=3, lease_for=30.0)
        await sqlite_store.outbox.block(first, error="x")
        await sqlite_store.outbox.block(second, error="x")
        await sqlite_store.outbox.mark_published([third])
        return [first.position, second.position, third.position]

    first, _, third = anyio.run(block_two_publish_one)
    code, out, err = run(capsys, "outbox", "replay", "--store", url, "--position", str(third))
    assert (code, out) == (0, "requeued 1 row\n"), err
    code, out, _ = run(capsys, "outbox", "replay", "--store", url, "--blocked", "--json")
    assert code == 0
    assert json.loads(out) == {
        "requeued": 2,
        "at_positions": 0,
        "positions_not_requeued": 0,
        "blocked": 2,
    }
    assert anyio.run(sqlite_store.outbox.status).pending == 3

    code, out, err = run(capsys, "outbox", "replay", "--store", url, "--position", str(first), "99")
    assert (code, out) == (1, "requeued 0 rows\n")
    assert "2 of the 2 positions given were not requeued" in err


def test_outbox_replay_needs_something_to_requeue(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    code, _, err = run(capsys, "outbox", "replay", "--store", url)
    assert code == 2
    assert "give --blocked, --position N, or both" in err
    code, _, err = run(capsys, "outbox", "replay", "--store", url, "--position", "0")
    assert code == 2
    assert "expected a whole number >= 1, got '0'" in err


# -- usage errors, the store URL, the environment ---------------------------------------------


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("mysql://app:s3cret@db/app", "unknown scheme 'mysql'"),
        ("postgresql://app:s3cret@db:port/app", "malformed URL"),
        ("postgresql://app:s3cret@db/app?schema=bad-name!", "schema: must be an identifier"),
        ("redis://:s3cret@cache/0?prefix=", "'prefix' is empty"),
        ("sqlite://", "no database file"),
        ("sqlite:///does/not/exist.db", "no SQLite database at 'does/not/exist.db'"),
    ],
)
def test_bad_store_urls_are_usage_errors_without_the_password(
    capsys: pytest.CaptureFixture[str], store: str, message: str
) -> None:
    code, out, err = run(capsys, "dead-letters", "list", "--store", store)
    assert (code, out) == (2, "")
    assert message in err
    assert "s3cret" not in err
    assert err.startswith("resilience-kit: error: ")
    assert err.count("\n") == 1


def test_an_unreachable_store_fails_without_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("redis")
    store = "redis://:s3cret@127.0.0.1:1/0"  # nothing listens on port 1
    code, out, err = run(capsys, "dead-letters", "list", "--store", store)
    assert (code, out) == (1, "")
    assert err.startswith("resilience-kit: error: the store is unavailable:")
    assert "Traceback" not in err
    assert "s3cret" not in err

    code, _, err = run(capsys, "dead-letters", "list", "--store", store, "--debug")
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert "StoreUnavailableError" in err
    assert "s3cret" not in err


def test_the_store_comes_from_the_environment(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sqlite_store: SQLiteStore,
    url: str,
) -> None:
    put(sqlite_store, make_letter())
    code, _, err = run(capsys, "dead-letters", "list")
    assert code == 2
    assert "no store: give --store URL or set RESILIENCE_KIT_STORE" in err
    monkeypatch.setenv("RESILIENCE_KIT_STORE", url)
    code, out, _ = run(capsys, "dead-letters", "list", "--json")
    assert code == 0
    assert len(json.loads(out)["dead_letters"]) == 1
    # --store wins over the environment, before or after the command
    assert run(capsys, "--store", "memory://", "dead-letters", "list")[1] == "no dead letters\n"
    assert run(capsys, "dead-letters", "list", "--store", "memory://")[1] == "no dead letters\n"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--since", "yesterday"], "argument --since: expected an ISO 8601 date or time"),
        (["--until", "2026-13-01"], "argument --until: expected an ISO 8601 date or time"),
        (["--since", "2026-01-02", "--until", "2026-01-01"], "--since must be earlier than"),
        (["--limit", "0"], "argument --limit: expected a whole number >= 1"),
        (["--limit", "ten"], "argument --limit: expected a whole number >= 1"),
        (["--since", "99999999w"], "argument --since: expected an ISO 8601 date or time"),
        (["--after", "not-a-uuid"], "argument --after: not a dead letter id"),
        (["--colour"], "unrecognized arguments: --colour"),
    ],
)
def test_bad_arguments_are_usage_errors(
    capsys: pytest.CaptureFixture[str], url: str, arguments: list[str], message: str
) -> None:
    code, out, err = run(capsys, "dead-letters", "list", "--store", url, *arguments)
    assert (code, out) == (2, "")
    assert message in err
    assert err.count("\n") == 1


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "dead-letters" in out
    assert "outbox" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.startswith("resilience-kit ")
    code, _, err = run(capsys)
    assert code == 2
    assert "required" in err


def test_an_unexpected_error_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Exploding(MemoryStore):
        closed = False

        def close(self) -> None:
            self.closed = True

    store = Exploding()

    async def explode(*args: object) -> int:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(cli, "open_store", lambda url, **_: store)
    monkeypatch.setitem(COMMANDS, "dead-letters list", explode)
    code, out, err = run(capsys, "dead-letters", "list", "--store", "memory://")
    assert (code, out) == (1, "")
    assert err == (
        "resilience-kit: error: unexpected ZeroDivisionError: boom (--debug shows the traceback)\n"
    )
    assert store.closed  # the store is closed however the command ends


def test_outbox_commands_need_a_store_with_an_outbox(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class NoOutbox:
        def __init__(self) -> None:
            self.dead_letters = MemoryStore().dead_letters

        def __repr__(self) -> str:
            return "NoOutbox()"

        def close(self) -> None:
            pass

    monkeypatch.setattr(cli, "open_store", lambda url, **_: NoOutbox())
    for command in (
        ["outbox", "status"],
        ["outbox", "blocked"],
        ["dead-letters", "replay", "--to", "outbox"],
    ):
        code, _, err = run(capsys, *command, "--store", "memory://")
        assert code == 2
        assert "NoOutbox() has no outbox" in err


# -- the command functions on their own, on asyncio and trio ----------------------------------


@pytest.mark.anyio
async def test_commands_run_on_any_event_loop() -> None:
    store = MemoryStore()
    letter = make_letter()
    await store.dead_letters.put(letter)
    out = io.StringIO()
    console = Console(out, io.StringIO(), io.StringIO())
    parser = build_parser(COMMANDS)

    args = parser.parse_args(["dead-letters", "show", str(letter.id), "--json"])
    assert await args.handler(store, args, console) == 0
    assert json.loads(out.getvalue())["id"] == str(letter.id)

    args = parser.parse_args(["dead-letters", "replay", "--to", "outbox"])
    assert await args.handler(store, args, console) == 0
    assert (await store.outbox.status()).pending == 1
    assert await store.dead_letters.count(DeadLetterFilter()) == 0


# -- the installed command --------------------------------------------------------------------


def test_the_console_script_is_installed() -> None:
    script = shutil.which("resilience-kit", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the resilience-kit script is not installed (pip install -e .)")
    completed = subprocess.run(
        [script, "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("usage: resilience-kit")


def test_python_dash_m(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "resilience_kit", "dead-letters", "list", "--store", "memory://"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=tmp_path,
    )
    assert (completed.returncode, completed.stdout) == (0, "no dead letters\n")


# -- PostgreSQL and Redis ---------------------------------------------------------------------


@pytest.fixture
def postgres_store(postgres_url: str) -> Iterator[tuple[Any, str]]:
    """A migrated PostgresStore in a schema of its own, and the URL naming that schema."""
    import psycopg  # noqa: PLC0415 - the postgres extra

    from resilience_kit.stores.postgres import PostgresStore  # noqa: PLC0415

    schema = f"cli_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(postgres_url, schema=schema, max_size=2)
    store.migrate()
    try:
        yield store, f"{postgres_url}?schema={schema}"
    finally:
        store.close()
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[tuple[Any, str, str]]:
    """A RedisStore under a prefix of its own, its URL, and the root of every key used."""
    import redis  # noqa: PLC0415 - the redis extra

    from resilience_kit.stores.redis import RedisStore  # noqa: PLC0415

    root = f"cli{uuid.uuid4().hex[:12]}:"
    store = RedisStore(url=redis_url, prefix=root)
    try:
        yield store, f"{redis_url}?prefix={root}", root
    finally:
        store.close()
        client = redis.Redis.from_url(redis_url)
        try:
            keys = list(client.scan_iter(match=f"{root}*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


def list_show_purge(capsys: pytest.CaptureFixture[str], store: Any, url: str) -> None:
    """The same operator session against any backend."""
    letter, other = make_letter(), make_letter(topic="orgs", minutes=1)
    put(store, letter, other)

    code, out, err = run(capsys, "dead-letters", "list", "--store", url, "--json")
    assert code == 0, err
    assert [record["id"] for record in json.loads(out)["dead_letters"]] == [
        str(letter.id),
        str(other.id),
    ]
    code, out, _ = run(capsys, "dead-letters", "list", "--store", url, "--topic", "orgs")
    assert code == 0
    assert str(other.id) in out
    assert str(letter.id) not in out

    code, out, _ = run(capsys, "dead-letters", "show", str(letter.id), "--store", url)
    assert code == 0
    assert "error type     builtins.TimeoutError" in out
    assert '"type": "invoice.paid"' in out
    assert run(capsys, "dead-letters", "show", str(uuid.uuid4()), "--store", url)[0] == 1

    code, out, _ = run(capsys, "dead-letters", "purge", "--store", url, "--topic", "orgs", "--yes")
    assert (code, out) == (0, "purged 1 dead letter\n")
    assert count(store) == 1
    assert run(capsys, "dead-letters", "purge", "--store", url)[0] == 2
    assert count(store) == 1


def test_postgres_list_show_purge(
    capsys: pytest.CaptureFixture[str], postgres_store: tuple[Any, str]
) -> None:
    store, url = postgres_store
    list_show_purge(capsys, store, url)


def test_postgres_outbox_and_replay(
    capsys: pytest.CaptureFixture[str], postgres_store: tuple[Any, str]
) -> None:
    store, url = postgres_store
    put(store, make_letter())
    code, out, err = run(capsys, "dead-letters", "replay", "--store", url, "--to", "outbox")
    assert (code, out) == (0, "replayed 1 to outbox (each to its own topic)\n"), err
    code, out, _ = run(capsys, "outbox", "status", "--store", url, "--json")
    assert code == 0
    assert json.loads(out)["pending"] == 1


def test_postgres_password_never_shows(
    capsys: pytest.CaptureFixture[str], postgres_url: str
) -> None:
    bad = postgres_url.replace("postgres@", "postgres:s3cret@", 1) + "?schema=no-dashes"
    code, _, err = run(capsys, "dead-letters", "list", "--store", bad)
    assert code == 2
    assert "s3cret" not in err
    assert "postgres:***@" in err


def test_redis_list_show_purge(
    capsys: pytest.CaptureFixture[str], redis_store: tuple[Any, str, str]
) -> None:
    store, url, _ = redis_store
    list_show_purge(capsys, store, url)


def test_redis_has_no_outbox_but_replays_to_streams(
    capsys: pytest.CaptureFixture[str], redis_store: tuple[Any, str, str], redis_url: str
) -> None:
    import redis  # noqa: PLC0415 - the redis extra

    store, url, root = redis_store
    letter, poison = make_letter(), make_letter(event_type=None, minutes=1)
    put(store, letter, poison)
    code, _, err = run(capsys, "outbox", "status", "--store", url)
    assert code == 2
    assert "has no outbox" in err
    code, _, err = run(capsys, "dead-letters", "replay", "--store", url, "--to", "outbox")
    assert code == 2

    streams = f"{redis_url}?prefix={root}stream:"
    code, out, err = run(
        capsys, "dead-letters", "replay", "--store", url, "--to", streams, "--json"
    )
    assert code == 0, err
    assert json.loads(out) == {
        "dry_run": False,
        "replayed": [str(letter.id)],
        "skipped": [str(poison.id)],
        "failed": [],
    }
    client = redis.Redis.from_url(redis_url)
    try:
        entries = client.xrange(f"{root}stream:billing")
    finally:
        client.close()
    assert len(entries) == 1
    replayed = Event.from_json(entries[0][1][b"data"])
    assert replayed.id == letter.event_id
    assert replayed.headers["rk-replays"] == "1"
    assert count(store) == 1  # the poison message stays


# -- how each kind of error ends, and the formatting helpers ----------------------------------


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (KeyboardInterrupt(), 130, "resilience-kit: error: interrupted\n"),
        (
            PermissionError("read-only file"),
            1,
            "resilience-kit: error: PermissionError: read-only file\n",
        ),
        (
            ImportError("install the redis extra"),
            1,
            "resilience-kit: error: install the redis extra\n",
        ),
        (BrokenPipeError(), 1, ""),  # the reader went away: nothing more to say
    ],
)
def test_how_errors_end_a_command(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
    code: int,
    line: str,
) -> None:
    async def fail(*args: object) -> int:
        raise error

    monkeypatch.setitem(COMMANDS, "outbox status", fail)
    assert run(capsys, "outbox", "status", "--store", "memory://") == (code, "", line)


def test_console_width_and_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    class TerminalOut(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(shutil, "get_terminal_size", lambda: os.terminal_size((77, 24)))
    assert Console(TerminalOut(), io.StringIO(), io.StringIO()).width() == 77
    assert Console(io.StringIO(), io.StringIO(), io.StringIO()).width() is None
    monkeypatch.setenv("COLUMNS", "101")
    assert Console(io.StringIO(), io.StringIO(), io.StringIO()).width() == 101

    raw = io.BytesIO()
    ascii_out = io.TextIOWrapper(raw, encoding="ascii")
    Console(ascii_out, ascii_out, io.StringIO()).print("caf\u00e9")
    ascii_out.flush()
    assert raw.getvalue() == b"caf\\xe9\n"
    ascii_out.detach()


def test_a_detached_stdin_is_not_a_terminal() -> None:
    class Closed(io.StringIO):
        def isatty(self) -> bool:
            raise ValueError("I/O operation on closed file")

    assert not Console(io.StringIO(), io.StringIO(), Closed()).interactive()


def test_formatting_helpers() -> None:
    assert [
        duration(value) for value in (0.04, 12.7, 245, 3 * 3600 + 150, 2 * 86_400 + 4 * 3600)
    ] == [
        "0.0s",
        "12s",
        "4m 05s",
        "3h 02m",
        "2d 04h",
    ]
    where = DeadLetterFilter(
        source="outbox", event_type="org.created", since=START, until=START, ids=(uuid.uuid4(),)
    )
    assert describe_filter(where) == (
        "source=outbox, type=org.created, since=2026-01-05 09:00:00,"
        " until=2026-01-05 09:00:00, 1 id"
    )
    assert moment(None) == "-"
    assert safe("tab\there\n", multiline=True) == "tab\there\n"
    assert safe("tab\there") == "tab\\there"


def test_private_docstring_examples() -> None:
    for module in (_cli_format, _cli_parser, _url):
        results = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert results.attempted > 0, module.__name__
        assert results.failed == 0, module.__name__


# -- the schema: only migrate creates it ----------------------------------------------------


@pytest.fixture
def users_db(tmp_path: Path) -> Path:
    """An application's database that has never seen resilience-kit: one users table."""
    path = tmp_path / "other.db"
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        connection.execute("INSERT INTO users (name) VALUES ('ada')")
    connection.close()
    return path


@pytest.mark.parametrize(
    "command",
    [
        ["dead-letters", "list"],
        ["dead-letters", "show", "0190b3b0-0000-7000-8000-000000000000"],
        ["dead-letters", "replay", "--to", "outbox", "--dry-run"],
        ["dead-letters", "purge", "--all", "--yes"],
        ["outbox", "status"],
        ["outbox", "blocked"],
        ["outbox", "replay", "--blocked"],
    ],
    ids=" ".join,
)
def test_commands_refuse_a_database_without_the_schema_and_leave_it_byte_identical(
    capsys: pytest.CaptureFixture[str], users_db: Path, command: list[str]
) -> None:
    before = users_db.read_bytes()
    code, out, err = run(capsys, *command, "--store", f"sqlite:///{users_db}")
    assert code == 2
    assert out == ""
    assert "has no resilience-kit tables" in err
    assert "resilience-kit migrate --store URL" in err
    assert users_db.read_bytes() == before
    assert sorted(path.name for path in users_db.parent.iterdir()) == ["other.db"]


def test_migrate_creates_the_schema_then_the_commands_work(
    capsys: pytest.CaptureFixture[str], users_db: Path
) -> None:
    url = f"sqlite:///{users_db}"
    code, out, _ = run(capsys, "migrate", "--store", url)
    assert code == 0
    assert "created and up to date" in out
    assert run(capsys, "outbox", "status", "--store", url)[0] == 0
    assert run(capsys, "dead-letters", "list", "--store", url)[1] == "no dead letters\n"
    code, out, _ = run(capsys, "migrate", "--store", url, "--json")  # again: nothing to do
    assert (code, json.loads(out)["migrated"]) == (0, True)
    connection = sqlite3.connect(users_db)
    assert connection.execute("SELECT name FROM users").fetchall() == [("ada",)]
    connection.close()


def test_an_outdated_schema_is_refused_and_left_for_migrate(
    capsys: pytest.CaptureFixture[str], users_db: Path
) -> None:
    connection = sqlite3.connect(users_db)
    with connection:  # the version table of a schema older than every migration
        connection.execute("CREATE TABLE rk_schema_version (version INTEGER, applied_at REAL)")
    connection.close()
    before = users_db.read_bytes()
    code, _, err = run(capsys, "outbox", "status", "--store", f"sqlite:///{users_db}")
    assert code == 2
    assert "has no resilience-kit tables" in err
    assert users_db.read_bytes() == before


def test_migrate_a_store_without_tables_has_nothing_to_do(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class KeysOnly:  # a Redis store: keys, no tables
        dead_letters = MemoryStore().dead_letters

        def close(self) -> None:
            pass

        def __repr__(self) -> str:
            return "RedisStore('redis://cache')"

    monkeypatch.setattr(cli, "open_store", lambda url, **_: KeysOnly())
    code, out, _ = run(capsys, "migrate", "--store", "redis://cache")
    assert (code, out) == (
        0,
        "RedisStore('redis://cache') has no tables to create: nothing to do\n",
    )
    code, out, _ = run(capsys, "migrate", "--store", "redis://cache", "--json")
    assert json.loads(out) == {"migrated": False, "store": "RedisStore('redis://cache')"}
    assert run(capsys, "migrate", "--store", "memory://")[0] == 0


def test_commands_refuse_a_postgres_schema_without_the_tables_and_create_nothing(
    capsys: pytest.CaptureFixture[str], postgres_url: str
) -> None:
    import psycopg  # noqa: PLC0415 - the postgres extra

    schema = f"cli_{uuid.uuid4().hex[:12]}"
    url = f"{postgres_url}?schema={schema}"

    def exists() -> bool:
        with psycopg.connect(postgres_url) as connection:
            row = connection.execute("SELECT to_regnamespace(%s)", (schema,)).fetchone()
        return row is not None and row[0] is not None

    try:
        for command in (["outbox", "status"], ["dead-letters", "list"]):
            code, out, err = run(capsys, *command, "--store", url)
            assert (code, out) == (2, "")
            assert "has no resilience-kit tables" in err
        assert not exists()
        assert run(capsys, "migrate", "--store", url)[0] == 0
        assert exists()
        assert run(capsys, "outbox", "status", "--store", url)[0] == 0
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
