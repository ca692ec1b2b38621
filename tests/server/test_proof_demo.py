"""The demo lab on first start has what the proof documents need: a month's attendance for its
cohort, briefings with signatures for the laser's proof list, and outcomes against a target."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from server.adapters.demo.proof import add_proof_demo
from server.adapters.demo.story import populate
from server.db import Database
from server.models import Attendance, BriefingConfirmation, MachineType, Person, Site
from server.services import attendance, briefings, outcomes
from server.services.lab_file import load, parse

DEMO = Path(__file__).resolve().parents[2] / "server" / "adapters" / "demo" / "demo.yaml"


def test_proof_demo_fills_sheet_briefings_and_outcomes(database: Database) -> None:
    now = datetime.now(UTC)
    with database.session() as s:
        load(s, parse(DEMO.read_text(encoding="utf-8")))
    with database.session() as s:
        populate(s, seed=1, now=now)  # the demo's participants and their history, as `werkbank up`
    with database.session() as s:
        added = add_proof_demo(s, now)
    assert added["check-ins"] > 0 and added["exits"] > 0 and added["targets"] > 0
    with database.session() as s:
        assert add_proof_demo(s, now) == {}  # once only
        site = s.scalars(select(Site)).first()
        assert site is not None and site.address and site.logo
        # Last month's sheet has people present for the lab's cohorts that ran then (a cohort that
        # began in the last days of that month may have none yet, depending on today's date).
        last_month = (now.date().replace(day=1) - timedelta(days=1)).replace(day=1)
        sheets = [
            attendance.month_sheet(s, site, last_month, now, cohort=cohort)
            for cohort in attendance.cohorts(s, site.id)
        ]
        assert max(sum(r.days_present for r in sheet.rows) for sheet in sheets) > 0
        assert s.scalar(select(func.count(Attendance.id))) == added["check-ins"]
        # Nobody checked in before they joined: the cohort that began last week (Lena's, "new this
        # week" in the banner) has no presence in the months before.
        early = s.execute(
            select(Person.name, Attendance.checked_in_at)
            .join(Person, Person.id == Attendance.person_id)
            .where(Attendance.checked_in_at < Person.created_at)
        ).all()
        assert early == []
        lena = s.scalar(select(Person).where(Person.email == "lena@demo.werkbank.local"))
        assert lena is not None and lena.created_at > now - timedelta(days=8)
        laser = s.scalar(select(MachineType).where(MachineType.slug.contains("laser")))
        assert laser is not None
        rows = briefings.proof_list(s, site.id, laser, now.date())
        assert rows and s.scalar(select(func.count(BriefingConfirmation.id))) == added.get("signatures", 0)
        result = outcomes.outcomes(s, now.date().replace(month=1, day=1), now.date(), site_id=site.id)
        assert result and result[0].target and result[0].integrations > 0
