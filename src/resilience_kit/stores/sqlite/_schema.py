"""The SQLite schema and its migrations: versioned, applied in order, recorded in a table.

Every table is prefixed ``rk_`` so the library's tables can share a database with the
application's (that is the point: the outbox row commits with the business write).
``rk_schema_version`` holds one row per applied migration. A migration is a list of
statements run inside the migrating transaction (``BEGIN IMMEDIATE``), so concurrent
migrations from several processes apply each step exactly once.

Times are Unix seconds as ``REAL`` (the database's clock: ``julianday('now')``), except
in dead letters, which keep the exact microseconds of the datetimes they were given.
Event ids in the outbox and the inbox are the UUID's 16 bytes (``BLOB``: compact, and
the cheapest form to bind on the hot path; ``hex(event_id)`` shows them); dead letter
ids are canonical UUID text, which sorts by time for UUIDv7.
"""

from __future__ import annotations

import sqlite3

from resilience_kit.errors import StoreSchemaError

__all__ = ("LATEST", "MIGRATIONS", "current_version", "migrate")

_NOW_DEFAULT = "((julianday('now') - 2440587.5) * 86400.0)"

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS rk_schema_version (
    version    INTEGER PRIMARY KEY,
    applied_at REAL NOT NULL
)
"""

# Outbox rows. AUTOINCREMENT: a position is never reused, even after the newest row was
# purged or dead-lettered, so a position an operator noted names one event for good.
# `available_at` is when a pending row is due, or when a leased row's lease
# expires: a row is claimable when it is pending or leased and `available_at <= now`.
# `rk_outbox_unpublished` covers the claim scan (unpublished rows in position order) and
# is the only index an insert maintains besides the table itself; the two other partial
# indexes only hold leased rows (live-lease lookups) and published rows (retention).
_V1 = (
    f"""
    CREATE TABLE rk_outbox (
        position     INTEGER PRIMARY KEY AUTOINCREMENT,
        topic        TEXT NOT NULL,
        key          TEXT NOT NULL,
        event_id     BLOB NOT NULL,
        event_type   TEXT NOT NULL,
        data         BLOB NOT NULL,
        created_at   REAL NOT NULL DEFAULT {_NOW_DEFAULT},
        state        TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'leased', 'blocked', 'published')),
        available_at REAL NOT NULL DEFAULT 0,
        lease        TEXT,
        attempts     INTEGER NOT NULL DEFAULT 0,
        last_error   TEXT,
        first_failed_at REAL,
        published_at REAL
    )
    """,
    """
    CREATE INDEX rk_outbox_unpublished ON rk_outbox (position, key, state, available_at)
    WHERE state != 'published'
    """,
    "CREATE INDEX rk_outbox_leased ON rk_outbox (key, available_at) WHERE state = 'leased'",
    "CREATE INDEX rk_outbox_published ON rk_outbox (published_at) WHERE state = 'published'",
    """
    CREATE TABLE rk_dead_letters (
        id               TEXT NOT NULL PRIMARY KEY,
        source           TEXT NOT NULL,
        topic            TEXT NOT NULL,
        key              TEXT,
        event_type       TEXT,
        data             BLOB NOT NULL,
        error_type       TEXT NOT NULL,
        error_message    TEXT NOT NULL,
        traceback        TEXT NOT NULL,
        attempts         INTEGER NOT NULL,
        first_failed_at  INTEGER NOT NULL,
        last_failed_at   INTEGER NOT NULL,
        dead_lettered_at INTEGER NOT NULL,
        replays          INTEGER NOT NULL DEFAULT 0
    )
    """,
    f"""
    CREATE TABLE rk_inbox (
        consumer     TEXT NOT NULL,
        event_id     BLOB NOT NULL,
        processed_at REAL NOT NULL DEFAULT {_NOW_DEFAULT},
        PRIMARY KEY (consumer, event_id)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX rk_inbox_processed_at ON rk_inbox (processed_at)",
    """
    CREATE TABLE rk_idempotency (
        key         TEXT NOT NULL PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('in_progress', 'completed')),
        token       TEXT NOT NULL,
        result      BLOB,
        expires_at  REAL NOT NULL
    )
    """,
    "CREATE INDEX rk_idempotency_expires_at ON rk_idempotency (expires_at)",
)

# Projection read models (messaging.Projection): versions, their rows (JSON text), the
# ids of the events applied to each version, and each projection's event log. A
# version's number is never reused: a dropped version keeps its row, state 'dropped'.
_V2 = (
    """
    CREATE TABLE rk_projection_versions (
        name    TEXT NOT NULL,
        version INTEGER NOT NULL,
        state   TEXT NOT NULL DEFAULT 'building'
                CHECK (state IN ('building', 'active', 'dropped')),
        PRIMARY KEY (name, version)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE rk_projection_rows (
        name    TEXT NOT NULL,
        version INTEGER NOT NULL,
        key     TEXT NOT NULL,
        value   TEXT NOT NULL,
        PRIMARY KEY (name, version, key)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE rk_projection_applied (
        name     TEXT NOT NULL,
        version  INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        PRIMARY KEY (name, version, event_id)
    ) WITHOUT ROWID
    """,
    # A projection's own event log: positions never reused (AUTOINCREMENT), an event once.
    """
    CREATE TABLE rk_projection_log (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        name     TEXT NOT NULL,
        event_id TEXT NOT NULL,
        data     BLOB NOT NULL,
        UNIQUE (name, event_id)
    )
    """,
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2)
"""Migration ``n`` (1-based) brings the schema from version ``n - 1`` to ``n``."""

LATEST = len(MIGRATIONS)


def current_version(connection: sqlite3.Connection) -> int:
    """The schema version recorded in the database (0 when nothing was created)."""
    exists = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'rk_schema_version'"
    ).fetchone()
    if exists is None:
        return 0
    version: int = connection.execute(
        "SELECT coalesce(max(version), 0) FROM rk_schema_version"
    ).fetchone()[0]
    return version


def migrate(connection: sqlite3.Connection, *, label: str) -> None:
    """Apply the missing migrations inside the caller's (immediate) transaction.

    Raises:
        StoreSchemaError: the database was migrated by a newer version of the library.
    """
    connection.execute(_VERSION_TABLE)
    version = current_version(connection)
    if version > LATEST:
        raise StoreSchemaError(
            f"the database schema is at version {version}, newer than this version of"
            f" resilience-kit knows ({LATEST}): upgrade resilience-patterns",
            store=label,
        )
    for number in range(version + 1, LATEST + 1):
        for statement in MIGRATIONS[number - 1]:
            connection.execute(statement)
        connection.execute(
            f"INSERT INTO rk_schema_version (version, applied_at) VALUES (?, {_NOW_DEFAULT})",  # noqa: S608 - a constant
            (number,),
        )
