"""`werkbank load`: a site's booking policy, cohort quotas and closed days (site-wide or per
machine), validated whole, applied all-or-nothing, idempotent, and obeyed by the booking rules."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from sqlalchemy import func, select

from server.db import Database
from server.models import Base, BookingPolicy, ClosedDay, CohortQuota, Machine, Person, Site
from server.services import bookings
from server.services.bookings import BookingError, Policy
from server.services.lab_file import LoadError, load, parse

SITE = """
sites:
  - slug: test-lab
    name: Test Lab
    timezone: Europe/Berlin
    booking:
      min_slot_min: 60
      max_slot_min: 180
      slot_step_min: 60
      max_ahead_days: 7
      weekly_quota_h: 6
      no_show_after_min: 20
      reminder_before_min: 120
    cohort_quotas:
      - {cohort: Cohort A, weekly_hours: 3}
      - {cohort: Cohort B, weekly_hours: 10.5}
    closed_days:
      - {day: 2026-12-24, reason: Christmas Eve}
      - {day: 2026-12-31}
machines:
  - slug: laser-1
    name: Laser 1
    site: test-lab
    type: co2-laser
    closed_days:
      - {day: 2026-11-19, reason: Lens service}
"""


def _counts(db: Database) -> dict[str, int]:
    with db.session() as s:
        return {
            t.name: s.scalar(select(func.count()).select_from(t)) or 0 for t in Base.metadata.sorted_tables
        }


def _load(db: Database, text: str) -> dict[str, int]:
    with db.session() as s:
        return load(s, parse(text))


def test_loader_bookings_policy_quotas_and_closed_days(lab: Database) -> None:
    counts = _load(lab, SITE)
    assert (counts["booking_policies"], counts["cohort_quotas"], counts["closed_days"]) == (1, 2, 3)
    with lab.session() as s:
        site = s.scalar(select(Site))
        assert site is not None
        policy = bookings.policy_for(s, site.id)
        assert policy == Policy(
            min_slot_min=60,
            max_slot_min=180,
            slot_step_min=60,
            max_ahead_days=7,
            weekly_quota_h=6.0,
            no_show_after_min=20,
            reminder_before_min=120,
        ), "keys left out keep their defaults"
        assert {q.cohort: q.weekly_hours for q in s.scalars(select(CohortQuota))} == {
            "Cohort A": 3.0,
            "Cohort B": 10.5,
        }
        laser = s.scalar(select(Machine).where(Machine.slug == "laser-1"))
        assert laser is not None
        days = {(d.day, d.machine_id, d.reason) for d in s.scalars(select(ClosedDay))}
        assert days == {
            (date(2026, 12, 24), None, "Christmas Eve"),
            (date(2026, 12, 31), None, None),
            (date(2026, 11, 19), laser.id, "Lens service"),
        }


def test_loader_bookings_the_rules_follow_the_loaded_file(lab: Database) -> None:
    _load(lab, SITE)
    now = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)  # Wed 10:00 in Berlin
    with lab.session() as s:
        quinn = s.scalar(select(Person).where(Person.name == "Quinn Qualified"))
        machines = {m.slug: m for m in s.scalars(select(Machine))}
        assert quinn is not None

        def refused(slug: str, start_h: int, end_h: int, day: int = 18) -> str:
            with pytest.raises(BookingError) as info:
                bookings.create(
                    s,
                    quinn,
                    machines[slug],
                    datetime(2026, 11, day, start_h, tzinfo=UTC),
                    datetime(2026, 11, day, end_h, tzinfo=UTC),
                    quinn,
                    now,
                )
            return info.value.code

        assert refused("laser-1", 10, 12, day=19) == "closed"  # the laser's service day
        assert refused("printer-1", 10, 14, day=19) == "too_long"  # 180 minutes at most
        assert refused("printer-1", 10, 12, day=26) == "too_far_ahead"  # 7 days
        # Quinn's cohort may book 3 hours a week.
        bookings.create(
            s,
            quinn,
            machines["printer-1"],
            datetime(2026, 11, 19, 10, tzinfo=UTC),
            datetime(2026, 11, 19, 13, tzinfo=UTC),
            quinn,
            now,
        )
        assert refused("laser-1", 10, 11, day=20) == "quota"


def test_loader_bookings_loading_again_changes_nothing_and_quotas_are_replaced(lab: Database) -> None:
    _load(lab, SITE)
    before = _counts(lab)
    _load(lab, SITE)
    assert _counts(lab) == before
    _load(
        lab,
        """
sites:
  - slug: test-lab
    name: Test Lab
    booking: {weekly_quota_h: 4}
    cohort_quotas: [{cohort: Cohort B, weekly_hours: 2}]
    closed_days: [{day: 2026-12-24, reason: Heiligabend}]
""",
    )
    with lab.session() as s:
        assert {q.cohort: q.weekly_hours for q in s.scalars(select(CohortQuota))} == {"Cohort B": 2.0}
        policy = s.scalars(select(BookingPolicy)).one()
        assert (policy.weekly_quota_h, policy.min_slot_min) == (4.0, 30), "the policy is replaced whole"
        reasons = {
            d.day: d.reason for d in s.scalars(select(ClosedDay).where(ClosedDay.machine_id.is_(None)))
        }
        assert reasons == {date(2026, 12, 24): "Heiligabend", date(2026, 12, 31): None}, "days are kept"
    # A file without the keys leaves them as they are.
    _load(lab, "sites: [{slug: test-lab, name: Test Lab}]")
    with lab.session() as s:
        assert s.scalar(select(func.count()).select_from(CohortQuota)) == 1
        assert s.scalar(select(func.count()).select_from(BookingPolicy)) == 1


def _site(extra: str) -> str:
    return f"sites: [{{slug: test-lab, name: Test Lab, {extra}}}]"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (_site("booking: {min_slot_minutes: 30}"), "unknown field `min_slot_minutes`"),
        (_site("booking: {min_slot_min: -30}"), "$.sites[0].booking.min_slot_min"),
        (_site("booking: {weekly_quota_h: lots}"), "$.sites[0].booking.weekly_quota_h"),
        (_site("booking: {max_ahead_days: 0}"), "$.sites[0].booking.max_ahead_days"),
        (
            _site("booking: {min_slot_min: 120, max_slot_min: 60}"),
            "min_slot_min (120) is longer than max_slot_min",
        ),
        (_site("booking: {slot_step_min: 7}"), "sites[0].booking.slot_step_min: 7 does not divide a day"),
        (_site("booking: {slot_step_min: 60}"), "sites[0].booking.min_slot_min: 30 is not a multiple"),
        (
            _site("booking: {no_show_after_min: 45}"),
            "no_show_after_min: 45 is longer than the shortest booking",
        ),
        (_site("cohort_quotas: [{cohort: A, weekly_hours: -1}]"), "$.sites[0].cohort_quotas[0].weekly_hours"),
        (_site("cohort_quotas: [{cohort: A}]"), "missing required field `weekly_hours`"),
        (
            _site("cohort_quotas: [{cohort: A, weekly_hours: 1}, {cohort: A, weekly_hours: 2}]"),
            "sites[0].cohort_quotas: cohort 'A' is listed twice",
        ),
        (_site("closed_days: [{day: 2026-02-30}]"), "not a valid date: day is out of range for month"),
        (_site("closed_days: [{day: soon}]"), "$.sites[0].closed_days[0].day"),
        (_site("closed_days: [{day: 2026-12-24}, {day: 2026-12-24}]"), "sites[0].closed_days[1]: 2026-12-24"),
        (
            "machines: [{slug: laser-1, name: L, site: test-lab, type: co2-laser,"
            " closed_days: [{date: 2026-12-01}]}]",
            "unknown field `date`",
        ),
    ],
)
def test_loader_bookings_bad_input_is_refused_with_its_place_and_changes_nothing(
    lab: Database, text: str, where: str
) -> None:
    before = _counts(lab)
    with pytest.raises(LoadError) as err, lab.session() as s:
        load(s, parse(text))
    assert where in str(err.value)
    assert _counts(lab) == before


def test_loader_bookings_all_or_nothing_with_a_later_error(lab: Database) -> None:
    """A good booking policy, then a machine of an unknown type: the policy is not written either."""
    before = _counts(lab)
    text = SITE + "  - {slug: m-2, name: M, site: test-lab, type: toaster}\n"
    with pytest.raises(LoadError, match="unknown machine type 'toaster'"), lab.session() as s:
        load(s, parse(text))
    assert _counts(lab) == before
