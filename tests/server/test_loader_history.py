"""`werkbank load`: history entries carry the time they were made, and every load is audited."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import select

from server.db import Database
from server.models import AuditLog, Person, Qualification, QualificationAction

BERLIN = ZoneInfo("Europe/Berlin")


def _lab_file(tmp_path: Path, today: date) -> Path:
    path = tmp_path / "lab.yaml"
    path.write_text(
        f"""
sites: [{{slug: nord, name: Nord, timezone: Europe/Berlin}}]
competencies: [{{slug: laser-safety, name: Laser safety}}]
people:
  - name: Tina Trainer
    email: tina@nord.test
    site: nord
    roles: [trainer]
    qualifications:
      - {{competency: laser-safety, level: trainer, granted: 2025-01-10}}
  - name: Quinn Qualified
    site: nord
    badges: ["04A224B2C35E80"]
    qualifications:
      - {{competency: laser-safety, granted: 2025-02-01, by: tina@nord.test}}
      - {{competency: laser-safety, granted: {today.isoformat()}, action: revoked, reason: unsafe,
         by: tina@nord.test}}
"""
    )
    return path


def test_loader_cli_history_entries_carry_the_time_they_were_made_and_the_load_is_audited(
    database: Database, tmp_path: Path
) -> None:
    from server import create_app
    from server.config import TestConfig

    app = create_app(TestConfig, DATABASE_URL=str(database.engine.url.render_as_string(hide_password=False)))
    before = datetime.now(UTC).replace(microsecond=0)
    path = _lab_file(tmp_path, datetime.now(BERLIN).date())
    result = app.test_cli_runner().invoke(args=["load", str(path)])
    after = datetime.now(UTC)
    assert result.exit_code == 0, result.output
    with database.session() as s:
        quinn = s.scalar(select(Person).where(Person.name == "Quinn Qualified"))
        assert quinn is not None
        entries = {
            q.action: q for q in s.scalars(select(Qualification).where(Qualification.person_id == quinn.id))
        }
        revoked = entries[QualificationAction.REVOKED]
        # Made today, by this load: not at noon (up to 12 hours before or after it was made).
        assert before <= revoked.created_at <= after
        # An entry from the lab's past records keeps its day (in the site's time zone).
        granted = entries[QualificationAction.GRANTED]
        assert granted.created_at == datetime.combine(date(2025, 2, 1), time(12), BERLIN)

        [audit] = s.scalars(select(AuditLog).where(AuditLog.action == "lab.load")).all()
        assert before <= audit.at <= after
        assert audit.subject == f"file:{path.name}"
        assert audit.detail["counts"]["people"] == 2 and audit.detail["counts"]["qualifications"] == 3
        assert audit.actor_label.startswith("cli")
