"""Alembic environment: the URL comes from the caller (server.migrate) or DATABASE_URL.

On SQLite the whole upgrade is one transaction with foreign keys off, checked before it commits,
as SQLite's own procedure for schema changes asks (https://sqlite.org/lang_altertable.html,
"Making Other Kinds Of Table Schema Changes"). Batch mode rebuilds a table by copying it and
dropping the original; with foreign keys on, dropping ``people`` while badges point at it
fails. And pysqlite opens a transaction only before a data change, so without the explicit BEGIN
a failed upgrade left half its tables behind and could not be run again.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo
from sqlalchemy import Connection, event

from server.db import make_engine
from server.migrate import ForeignKeyViolation
from server.models import Base

config = context.config
url = (
    config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL") or "sqlite:///var/werkbank.db"
)


def run() -> None:
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":
        # After server.db's own connect hook (which turns foreign keys on): listeners run in order.
        event.listen(engine, "connect", _sqlite_for_migrations)
        event.listen(engine, "begin", _sqlite_begin)
    try:
        with engine.connect() as connection:
            _migrate(connection)
    finally:
        engine.dispose()


def _sqlite_for_migrations(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we say BEGIN ourselves (_sqlite_begin), DDL included
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction: set it before
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # IMMEDIATE: take the write lock now, not half-way through the upgrade.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _note_applied(
    ctx: MigrationContext, step: MigrationInfo, heads: Collection[Any], run_args: Mapping[str, Any]
) -> None:
    """Tell server.migrate.upgrade which revisions ran (it rebuilds what a migration needs)."""
    applied = config.attributes.get("applied")
    if applied is not None and step.is_upgrade:
        applied.extend(step.up_revision_ids)


def _check_foreign_keys(connection: Connection) -> None:
    rows = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if rows:
        found = "; ".join(f"{table} row {rowid} -> {parent}" for table, rowid, parent, _fk in rows[:10])
        raise ForeignKeyViolation(
            f"{len(rows)} row(s) point at rows that do not exist ({found}); the upgrade was rolled back "
            "and nothing was changed. Fix or delete those rows, then upgrade again."
        )


def _migrate(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite can only ALTER by copying the table
        compare_type=True,
        transactional_ddl=True,  # one transaction for the whole upgrade (SQLite: see above)
        on_version_apply=_note_applied,
    )
    with context.begin_transaction():
        context.run_migrations()
        if sqlite:
            _check_foreign_keys(connection)


run()
