"""Alembic environment: the URL comes from the caller (server.migrate) or DATABASE_URL."""

from __future__ import annotations

import os

from alembic import context

from server.db import make_engine
from server.models import Base

config = context.config
url = (
    config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL") or "sqlite:///var/werkbank.db"
)


def run() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _migrate(connectable)
        return
    engine = make_engine(url)
    with engine.connect() as connection:
        _migrate(connection)
    engine.dispose()


def _migrate(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite can only ALTER by copying the table
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
