"""The Alembic migrations produce exactly the schema the models describe (SQLite and PostgreSQL)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from server.db import Database
from server.models import Base


def test_migrations_match_the_models(database: Database) -> None:
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_a_plain_postgresql_url_uses_the_installed_driver() -> None:
    """DATABASE_URL=postgresql://… (as PostgreSQL's own tools write it) means psycopg 3, which
    Werkbank installs, not SQLAlchemy's default psycopg2; nothing connects here."""
    from server.db import make_engine
    from server.migrate import alembic_config

    for url in ("postgresql://werkbank@db.example/werkbank", "postgres://werkbank@db.example/werkbank"):
        engine = make_engine(url)
        assert engine.dialect.driver == "psycopg"
        engine.dispose()
        assert alembic_config(url).get_main_option("sqlalchemy.url", "").startswith("postgresql+psycopg://")
    assert make_engine("sqlite://").dialect.name == "sqlite"
