"""Engine and sessions. Services take the session they work in; callers open it.

The web request, the MQTT bridge and a scheduler job each open their own short
session (docs/architecture.md, "Sessions and transactions") through :meth:`Database.session`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import ARRAY, ColumnElement, Engine, any_, bindparam, create_engine, event
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker
from sqlalchemy.pool import StaticPool

T = TypeVar("T")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the web, the bridge and the scheduler read while one writes; NORMAL is
    # durable across process crashes (not OS crashes), which is what the outbox relies on.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def normalise_url(url: str) -> str:
    """``postgresql://`` (and ``postgres://``) mean psycopg 3, the driver we install; SQLAlchemy
    would otherwise look for psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def make_engine(url: str, echo: bool = False) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 10}}
        if url in ("sqlite://", "sqlite:///:memory:"):
            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, echo=echo, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20)


def one_of(db: Session, column: InstrumentedAttribute[T], values: Iterable[T]) -> ColumnElement[bool]:
    """``column IN values``; on PostgreSQL as ``column = ANY(<one array parameter>)``.

    An ``IN`` list renders one parameter per value, so a statement over 500 devices is new text
    whenever the count changes, and past 50 parameters psycopg parses it again on every execution
    (its statement cache stops there): about a fifth of the telemetry writer's busy samples under
    a flood (docs/performance.md, "Telemetry"). One array parameter keeps the text the same for
    any count, so it is parsed once and PostgreSQL may prepare it. SQLite has no arrays and keeps
    ``IN``.
    """
    listed = list(values)
    if db.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam("one_of", listed, type_=ARRAY(column.type), unique=True))
    return column.in_(listed)


class Database:
    """One engine and its session factory, bound late (Flask-style ``init``)."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._factory: sessionmaker[Session] | None = None

    def init(self, url: str, echo: bool = False) -> None:
        if self._engine is not None:
            self._engine.dispose()
        self._engine = make_engine(url, echo)
        self._factory = sessionmaker(self._engine, expire_on_commit=False)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("database not initialised: call Database.init(url) first")
        return self._engine

    def new_session(self) -> Session:
        if self._factory is None:
            raise RuntimeError("database not initialised: call Database.init(url) first")
        return self._factory()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits at the end of the block and rolls back on an exception."""
        session = self.new_session()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
