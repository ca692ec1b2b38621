"""Alembic migrations run from code (``werkbank db upgrade``), no alembic.ini needed, and the
schema check the processes make before they start (README, "Upgrading").

A database's schema is one of: *current* (at this code's head), *behind* (an older Werkbank's
schema: run ``werkbank db upgrade``), *empty* (no Werkbank schema yet) or *newer* (a revision
none of our migration scripts knows: a newer Werkbank upgraded it, and this code must not touch
it). :func:`upgrade` refuses a newer schema before it changes anything; ``werkbank web``,
``bridge``, ``scheduler`` and the WSGI app refuse to start on anything but a current one
(:func:`require_current`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from server.db import Database, make_engine, normalise_url

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The migration that created the usage aggregates. A database upgraded across it holds sessions,
# jobs and bookings the aggregates have never seen: they are rebuilt once at the end.
USAGE_AGGREGATES = "0006"
VERSION_TABLE = "alembic_version"  # alembic's default, which env.py keeps


class SchemaError(Exception):
    """The database's schema is not one this code may run on (the message says what to do).

    An ``Exception`` rather than ``SystemExit``: gunicorn then stops with "Worker failed to
    boot" instead of starting new workers for ever."""


class DowngradeRefused(SchemaError):
    """``werkbank db upgrade --revision`` named a revision older than the database's: migrations
    only go forward (a downgrade would drop the data of the columns and tables it removes)."""


class ForeignKeyViolation(RuntimeError):
    """Rows point at rows that do not exist after the migrations (SQLite): rolled back."""


def alembic_config(url: str) -> AlembicConfig:
    url = normalise_url(url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema stands against this code's migration scripts."""

    revisions: tuple[str, ...]  # in the database's alembic_version; () before the first upgrade
    heads: tuple[str, ...]  # the newest revision(s) this code knows
    unknown: tuple[str, ...]  # revisions of the database that no script here knows

    @property
    def current(self) -> bool:
        return set(self.revisions) == set(self.heads)

    @property
    def newer(self) -> bool:
        return bool(self.unknown)

    @property
    def empty(self) -> bool:
        return not self.revisions

    def describe(self) -> str:
        return ", ".join(self.revisions) or "none"


def schema_state(url: str) -> SchemaState:
    """Read the database's schema revision (nothing is written)."""
    script = ScriptDirectory.from_config(alembic_config(url))
    known = {s.revision for s in script.walk_revisions()}
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            # Read directly: alembic's MigrationContext would log its set-up at every process start.
            revisions: tuple[str, ...] = ()
            if inspect(conn).has_table(VERSION_TABLE):
                revisions = tuple(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    finally:
        engine.dispose()
    return SchemaState(
        revisions=revisions,
        heads=tuple(script.get_heads()),
        unknown=tuple(r for r in revisions if r not in known),
    )


def newer_message(state: SchemaState) -> str:
    return (
        f"the database's schema is at revision {state.describe()}, which this Werkbank (schema "
        f"{', '.join(state.heads)}) does not know: a newer Werkbank has upgraded it. Install that "
        "newer Werkbank again, or restore the backup taken before the upgrade to go back to this "
        "version (README, 'Upgrading')"
    )


def problem(state: SchemaState) -> str | None:
    """What keeps this code from running on the schema and what to do, or None if nothing."""
    if state.current:
        return None
    if state.newer:
        return newer_message(state)
    if state.empty:
        return "the database has no Werkbank schema yet. Run `werkbank db upgrade` first"
    return (
        f"the database's schema is at revision {state.describe()}, older than this Werkbank's "
        f"{', '.join(state.heads)}. Stop the web, bridge and scheduler, back up the database, then "
        "run `werkbank db upgrade` (README, 'Upgrading')"
    )


def require_current(url: str, process: str) -> SchemaState:
    """Raise :class:`SchemaError` unless the schema is this code's (a process about to start)."""
    state = schema_state(url)
    wrong = problem(state)
    if wrong is not None:
        raise SchemaError(f"werkbank {process} does not start: {wrong}.")
    return state


@dataclass
class UpgradeResult:
    before: SchemaState
    applied: list[str] = field(default_factory=list)  # revisions applied, oldest first
    rebuilt_days: int | None = None  # machine-days of usage aggregates recomputed, if any
    rebuild_pending: bool = False  # crossed USAGE_AGGREGATES but stopped short of head


def upgrade(url: str, revision: str = "head") -> UpgradeResult:
    """Migrate to ``revision``. Refuses (:class:`SchemaError`, nothing changed) a database
    whose schema is newer than this code. On SQLite every migration runs in one transaction,
    with foreign keys checked at its end (server/migrations/env.py): all or nothing."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////:memory"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    before = schema_state(url)
    if before.newer:
        raise SchemaError(f"{newer_message(before)}. Nothing was changed.")
    cfg = alembic_config(url)
    older = _older_target(ScriptDirectory.from_config(cfg), before, revision)
    if older is not None:
        raise DowngradeRefused(
            f"the database's schema is at revision {before.describe()}; revision {older} is older. "
            "`werkbank db upgrade` only goes forward: going back would drop what the newer "
            "migrations added. To go back to an older Werkbank, restore the backup taken before "
            "the upgrade into an empty database (`werkbank restore`, docs/deploy.md 'Going back'). "
            "Nothing was changed."
        )
    applied: list[str] = []
    cfg.attributes["applied"] = applied  # env.py notes each revision it applies
    command.upgrade(cfg, revision)
    result = UpgradeResult(before=before, applied=applied)
    if USAGE_AGGREGATES in applied and not before.empty:
        if schema_state(url).current:
            result.rebuilt_days = _rebuild_usage(url)
        else:
            result.rebuild_pending = True
    return result


def _older_target(script: ScriptDirectory, before: SchemaState, revision: str) -> str | None:
    """The revision ``revision`` names when it is older than the database's (an ancestor of
    what the database is at, not that itself); None when it is the same, newer or unknown
    (alembic then says what is wrong with it). Relative targets (``-1``) go back too."""
    if before.empty:
        return None
    if revision.lstrip().startswith("-") or revision.strip() == "base":
        return revision.strip()
    try:
        targets = script.get_revisions(revision)
    except Exception:  # unknown or ambiguous: alembic's own error says which
        return None
    behind = {r.revision for r in script.iterate_revisions(before.revisions, "base")}
    for target in targets:
        if target is not None and target.revision in behind and target.revision not in before.revisions:
            return target.revision
    return None


def _rebuild_usage(url: str) -> int:
    """Fill the aggregates the dashboards and reports read from the history an older schema
    kept without them (the models are the newest ones, so only at head)."""
    from server.services import usage

    log.info("the usage aggregates are new in this schema: computing them from the history")
    database = Database()
    database.init(url)
    try:
        return usage.rebuild(database)
    finally:
        database.dispose()


def revision(url: str, message: str) -> None:
    command.revision(alembic_config(url), message=message, autogenerate=True)
