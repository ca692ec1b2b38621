"""server.db's ``one_of``: ``IN`` on SQLite, one array parameter on PostgreSQL, the same rows."""

from __future__ import annotations

from sqlalchemy import select

from server.db import Database, one_of
from server.models import Device


def test_one_of_finds_the_same_rows_as_in_for_none_one_and_many_values(lab: Database) -> None:
    with lab.session() as db:
        every = sorted(db.scalars(select(Device.id)))
        assert len(every) >= 2
        # 60 values: past the 50 parameters up to which psycopg caches a statement's parsing.
        asked = [every[0], "no-such-device", *[f"ghost-{n}" for n in range(57)], every[-1]]
        for values in ([], [every[0]], asked):
            found = sorted(db.scalars(select(Device.id).where(one_of(db, Device.id, values))))
            expected = sorted(db.scalars(select(Device.id).where(Device.id.in_(values))))
            assert found == expected == sorted(v for v in set(values) if v in every)


def test_one_of_keeps_one_statement_text_for_any_count_on_postgresql(lab: Database) -> None:
    with lab.session() as db:
        dialect = db.get_bind().dialect

        def sql(count: int) -> str:
            query = select(Device.id).where(one_of(db, Device.id, [f"pi-{n}" for n in range(count)]))
            return str(query.compile(dialect=dialect))

        if dialect.name == "postgresql":
            assert sql(1) == sql(500) and "ANY" in sql(500)
        else:  # SQLite: a plain IN list, expanded when it runs
            assert " IN " in sql(2)
