"""An operator's session with the `resilience-kit` command line, against a SQLite store.

A mailer consumer gave up on three `invoice.paid` events while the SMTP server was
down, and on one message that was not an event at all. The SMTP server is back: list
the dead letters, look at one, replay the events into the outbox (whose relay will
publish them again), and purge the poison message.

Each step calls `resilience_kit.cli.main` with the arguments you would type after
`resilience-kit` in a shell, and shows what it printed.
"""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path

import anyio

from resilience_kit.cli import main
from resilience_kit.messaging import DeadLetter, Event
from resilience_kit.stores.sqlite import SQLiteStore


def dead_letter_some_messages(store: SQLiteStore) -> list[DeadLetter]:
    letters = []
    for number in (1041, 1042, 1043):
        event = Event(type="invoice.paid", key=f"invoice:{number}", payload={"number": number})
        try:
            raise TimeoutError("SMTP server smtp.internal:25 did not answer within 10s")
        except TimeoutError as error:
            letters.append(
                DeadLetter.create(
                    source="consumer:mailer",
                    topic="billing",
                    data=event.to_json(),
                    error=error,
                    attempts=3,
                )
            )
    try:
        raise ValueError("not an event: expected a JSON object")
    except ValueError as error:
        letters.append(
            DeadLetter.create(
                source="consumer:mailer",
                topic="billing",
                data=b"\x00\x01garbage from a misconfigured producer",
                error=error,
                attempts=1,
            )
        )

    async def put_all() -> None:
        for letter in letters:
            await store.dead_letters.put(letter)

    anyio.run(put_all)
    return letters


def run(*arguments: str) -> int:
    print(f"\n$ resilience-kit {shlex.join(arguments)}")
    code = main(list(arguments))
    if code:
        print(f"(exit status {code})")
    return code


def walkthrough(directory: Path) -> None:
    path = directory / "app.db"
    store = SQLiteStore(path)
    store.migrate()
    try:
        letters = dead_letter_some_messages(store)
    finally:
        store.close()
    url = f"sqlite:///{path}"  # an absolute path, so four slashes in all

    assert run("dead-letters", "list", "--store", url) == 0
    assert run("dead-letters", "show", str(letters[0].id), "--store", url) == 0
    assert run("dead-letters", "replay", "--store", url, "--to", "outbox", "--dry-run") == 0
    assert run("dead-letters", "replay", "--store", url, "--to", "outbox") == 0
    assert run("outbox", "status", "--store", url) == 0
    # Purging everything takes --all, and --yes where there is no terminal to confirm on.
    assert run("dead-letters", "purge", "--store", url, "--all", "--yes") == 0
    assert run("dead-letters", "list", "--store", url, "--json") == 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="rk-cli-") as temporary:
        walkthrough(Path(temporary))
