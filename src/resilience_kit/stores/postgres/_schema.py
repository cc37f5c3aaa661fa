"""The PostgreSQL stores' tables, created and upgraded by numbered migrations.

`migrate` runs in one transaction under an advisory lock on the schema's name, so any
number of processes may call it at once: the first applies what is missing, the others
wait for it and then find nothing to do. Applied versions are recorded in
``rk_schema_version``; a schema newer than this library is refused, not downgraded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resilience_kit.errors import StoreSchemaError

if TYPE_CHECKING:
    import psycopg

__all__ = ("MIGRATIONS", "current_version", "migrate")

# pg_advisory_xact_lock(class, hashtext(schema)): the class keeps our locks apart from
# the application's own advisory locks ("rk" in ASCII).
_LOCK_CLASS = 0x726B

# Outbox rows: state 0 pending (a lease token with available_at in the future means
# leased; available_at is then the lease's expiry), 1 blocked, 2 published.
# available_at is NULL until a row is leased or delayed (due since it was added): no
# default and no CHECK constraint, because each costs about 5% of a one-row INSERT and
# `Outbox.add` must stay within 1.3x of a plain INSERT. Keys use
# the "C" collation: the claim walks keys in index order, and byte order is the same on
# every server whatever its locale. Event JSON, error texts and tracebacks are bytea:
# a text column cannot hold NUL, and nothing in them is filtered on.
_V1 = (
    """
    CREATE TABLE {schema}.rk_outbox (
        position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        topic text NOT NULL,
        key text COLLATE "C" NOT NULL,
        event_id uuid NOT NULL,
        event_type text NOT NULL,
        data bytea NOT NULL,
        state smallint NOT NULL DEFAULT 0,
        attempts integer NOT NULL DEFAULT 0,
        available_at timestamptz,
        lease text,
        last_error bytea,
        first_failed_at timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        published_at timestamptz
    ) WITH (
        -- A queue: every row is updated twice and deleted once. Finding a key's head
        -- skips the index entries of its published rows until VACUUM removes them, so
        -- vacuum (and analyze, for the claim's plans) after a small share of changes.
        autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_vacuum_threshold = 1000,
        autovacuum_analyze_scale_factor = 0.02
    )
    """,
    # The claim's walk over keys, each key's head and its prefix: unpublished rows only.
    """
    CREATE INDEX rk_outbox_key_idx ON {schema}.rk_outbox (key, position) WHERE state <> 2
    """,
    # "Does this key hold a lease right now?": the rows carrying a lease token are few
    # (what relays hold, plus expired leases not yet reclaimed).
    """
    CREATE INDEX rk_outbox_leased_idx ON {schema}.rk_outbox (key)
        WHERE state = 0 AND lease IS NOT NULL
    """,
    """
    CREATE TABLE {schema}.rk_dead_letters (
        id uuid PRIMARY KEY,
        source text NOT NULL,
        topic text NOT NULL,
        key text,
        event_type text,
        error_type text NOT NULL,
        error_message bytea NOT NULL,
        traceback bytea NOT NULL,
        attempts integer NOT NULL,
        first_failed_at timestamptz NOT NULL,
        last_failed_at timestamptz NOT NULL,
        dead_lettered_at timestamptz NOT NULL,
        replays integer NOT NULL DEFAULT 0,
        data bytea NOT NULL
    )
    """,
    """
    CREATE TABLE {schema}.rk_inbox (
        consumer text NOT NULL,
        event_id uuid NOT NULL,
        processed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (consumer, event_id)
    )
    """,
    """
    CREATE TABLE {schema}.rk_idempotency (
        key text PRIMARY KEY,
        fingerprint text NOT NULL,
        status text NOT NULL,
        token text NOT NULL,
        result bytea,
        expires_at timestamptz NOT NULL
    )
    """,
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1,)
"""Statements per version: ``MIGRATIONS[0]`` is version 1. Append; never edit."""


def current_version(connection: psycopg.Connection[Any], schema: str) -> int:
    """The schema version recorded in ``schema`` (0 when nothing was created); reads only."""
    from psycopg import sql  # noqa: PLC0415  (optional extra, imported on use)

    row = connection.execute(
        "SELECT to_regclass(%s) IS NULL", (f'"{schema}".rk_schema_version',)
    ).fetchone()
    if row is None or row[0]:
        return 0
    row = connection.execute(
        sql.SQL("SELECT coalesce(max(version), 0) FROM {}.rk_schema_version").format(
            sql.Identifier(schema)
        )
    ).fetchone()
    return int(row[0]) if row is not None else 0


def migrate(connection: psycopg.Connection[Any], schema: str, store: str) -> None:
    """Create or upgrade the tables in ``schema`` on ``connection`` (autocommit).

    Raises:
        StoreSchemaError: the schema is newer than this library (``store`` names the store).
    """
    from psycopg import sql  # noqa: PLC0415  (optional extra, imported on use)

    name = sql.Identifier(schema)
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, schema))
        # Only when missing: CREATE SCHEMA IF NOT EXISTS still needs the CREATE
        # privilege on the database, which an application role may lack.
        row = connection.execute("SELECT to_regnamespace(%s) IS NULL", (f'"{schema}"',)).fetchone()
        if row is not None and row[0]:
            connection.execute(sql.SQL("CREATE SCHEMA {}").format(name))
        connection.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.rk_schema_version ("
                " version integer PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(name)
        )
        row = connection.execute(
            sql.SQL("SELECT coalesce(max(version), 0) FROM {}.rk_schema_version").format(name)
        ).fetchone()
        current = int(row[0]) if row is not None else 0
        if current > len(MIGRATIONS):
            raise StoreSchemaError(
                f"schema {schema!r} is at version {current}; this resilience-kit knows "
                f"versions up to {len(MIGRATIONS)}: upgrade resilience-kit",
                store=store,
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            for statement in MIGRATIONS[version - 1]:
                connection.execute(sql.SQL(statement).format(schema=name))
            connection.execute(
                sql.SQL("INSERT INTO {}.rk_schema_version (version) VALUES (%s)").format(name),
                (version,),
            )
