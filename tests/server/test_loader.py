"""`werkbank load`: the lab file is validated whole, applied in one go, and idempotent."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from server.db import Database
from server.models import Badge, Base, Machine, Person, Qualification
from server.services.lab_file import LoadError, load, parse
from tests.conftest import DATA


def _counts(db: Database) -> dict[str, int]:
    with db.session() as s:
        return {
            t.name: s.scalar(select(func.count()).select_from(t)) or 0 for t in Base.metadata.sorted_tables
        }


def test_loader_loading_twice_changes_nothing_more(lab: Database) -> None:
    before = _counts(lab)
    # people without an e-mail cannot be matched, so load only the ones with one again
    text = (DATA / "lab.yaml").read_text()
    with lab.session() as s:
        load(s, parse(text.split("  - name: Uma Unqualified")[0] + text[text.index("machines:") :]))
    assert _counts(lab) == before


def test_loader_updates_in_place(lab: Database) -> None:
    with lab.session() as s:
        load(
            s,
            parse("""
machines:
  - {slug: printer-1, name: Printer One, site: test-lab, type: fdm-printer, status: maintenance}
"""),
        )
    with lab.session() as s:
        m = s.scalar(select(Machine).where(Machine.slug == "printer-1"))
        assert m is not None and m.name == "Printer One" and m.status == "maintenance"
        assert m.device is not None  # the device is kept


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("people: [{name: X, site: nowhere}]", "unknown site 'nowhere'"),
        ("people: [{name: X, site: test-lab, badges: [deadbeef]}]", "$.people[0].badges[0]"),
        ("people: [{name: X, site: test-lab, rolez: [admin]}]", "unknown field `rolez`"),
        ("machines: [{slug: m-1, name: M, site: test-lab, type: toaster}]", "unknown machine type 'toaster'"),
        ("sites: [{slug: s-1, name: S, timezone: Mars/Olympus}]", "unknown time zone"),
        (
            "sites: [{slug: s-1, name: S, opening_hours: [{days: [mon], opens: '18:00', closes: '08:00'}]}]",
            "closes (08:00) must be after opens",
        ),
        ("people: [{name: X, site: test-lab, badges: [A1B2C3D4]}]", "belongs to someone else"),
        ("sites: [unclosed", "not valid YAML"),
        ("machine_types: [{slug: t-1, name: T, requires: [no-such-competency]}]", "unknown competency"),
    ],
)
def test_loader_bad_file_is_refused_with_its_place_and_changes_nothing(
    lab: Database, text: str, where: str
) -> None:
    before = _counts(lab)
    with pytest.raises(LoadError) as err, lab.session() as s:
        load(s, parse(text))
    assert where in str(err.value)
    assert _counts(lab) == before


def test_loader_cli_loads_and_reports(database: Database, tmp_path: Path) -> None:
    from server import create_app
    from server.config import TestConfig

    app = create_app(TestConfig, DATABASE_URL=str(database.engine.url.render_as_string(hide_password=False)))
    runner = app.test_cli_runner()
    result = runner.invoke(args=["load", str(DATA / "lab.yaml")])
    assert result.exit_code == 0, result.output
    assert "7 people" in result.output
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Badge)) == 7
        quinn = s.scalar(select(Person).where(Person.email == "quinn@test.local"))
        assert quinn is not None and quinn.password_hash and quinn.password_hash.startswith("$argon2id$")
        assert s.scalar(select(func.count()).select_from(Qualification)) == 7

    bad = tmp_path / "bad.yaml"
    bad.write_text("people: [{name: X, site: test-lab, badges: [nothex!!]}]")
    result = runner.invoke(args=["load", str(bad)])
    assert result.exit_code != 0
    assert "Nothing was changed" in result.output and "badges[0]" in result.output
