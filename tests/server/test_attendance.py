"""Attendance: check-in at the entrance (through the real bridge and broker), presence from stays
and machine sessions, forgotten check-outs closed at closing time, corrections under the staff
rule, absences against a cohort's timetable."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from server.adapters.bridge import Bridge, wait_until
from server.adapters.scheduler import close_forgotten_checkins
from server.db import Database
from server.models import (
    Attendance,
    AuditLog,
    CertificateKind,
    ClosedDay,
    Device,
    ExitReason,
    Machine,
    MachineSession,
    ParticipantExit,
    Person,
    Site,
    StoredEvent,
)
from server.services import attendance, certificates
from server.services.training import REFUSALS, TrainingError, audit_refusal
from tests.conftest import Clock
from tests.mqtt_peer import Peer
from werkbank_protocol import format_ts
from werkbank_protocol.messages import AuthResp, decode_as

BERLIN = ZoneInfo("Europe/Berlin")
ENTRANCE = "werkbank/v1/dev/entrance-1"
QUINN = "04A224B2C35E80"


def at(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm), tzinfo=BERLIN).astimezone(UTC)


def person(s, name: str) -> Person:  # type: ignore[no-untyped-def]
    found = s.scalar(select(Person).where(Person.name == name))
    assert found is not None
    return found


@pytest.fixture
def entrance(lab: Database) -> Database:
    with lab.session() as s:
        site = s.scalar(select(Site))
        assert site is not None
        s.add(Device(id="entrance-1", entrance_site_id=site.id))
    return lab


@pytest.fixture
def bridge(entrance: Database, mqtt_url: str, clock: Clock) -> Iterator[Bridge]:
    running = Bridge(entrance, mqtt_url, client_id=f"bridge-{uuid.uuid4().hex[:6]}", clock=clock).start()
    assert running.connected.is_set()
    yield running
    running.stop()


@pytest.fixture
def reader(mqtt_url: str) -> Iterator[Peer]:
    peer = Peer(mqtt_url)
    for suffix in ("auth/resp", "ack"):
        peer.subscribe(f"{ENTRANCE}/{suffix}")
        peer.subscribe(f"werkbank/v1/dev/pi-printer-1/{suffix}")
    yield peer
    peer.close()


def _checkin(badge: str, at: datetime | None = None) -> tuple[str, bytes]:
    """A check-in request, sent at ``at`` (the bridge drops taps older than the agent waits)."""
    rid = str(uuid.uuid4())
    ts = format_ts(at) if at is not None else "2026-11-18T09:00:00.000Z"
    body = {"v": 1, "id": rid, "ts": ts, "badge": badge, "mode": "checkin"}
    return rid, json.dumps(body).encode()


def test_attendance_entrance_tap_checks_in_then_out_in_both_languages(
    bridge: Bridge, reader: Peer, entrance: Database, clock: Clock
) -> None:
    rid, payload = _checkin(QUINN)
    reader.publish(f"{ENTRANCE}/auth/req", payload)
    came = decode_as(AuthResp, reader.next(f"{ENTRANCE}/auth/resp"))
    assert (came.req, came.decision, came.attendance, came.session) == (rid, "allow", "in", None)
    assert came.message["en"].startswith("Welcome, Quinn") and came.message["de"].startswith("Willkommen")

    # The card still on the reader a few seconds later: no check-out.
    clock.advance(seconds=5)
    reader.publish(f"{ENTRANCE}/auth/req", _checkin(QUINN, clock())[1])
    assert decode_as(AuthResp, reader.next(f"{ENTRANCE}/auth/resp")).attendance == "repeat"

    clock.advance(hours=3)
    reader.publish(f"{ENTRANCE}/auth/req", _checkin(QUINN, clock())[1])
    went = decode_as(AuthResp, reader.next(f"{ENTRANCE}/auth/resp"))
    assert (went.decision, went.attendance) == ("allow", "out")
    assert went.message["en"].startswith("Goodbye, Quinn")
    with entrance.session() as s:
        stays = s.scalars(select(Attendance)).all()
        assert len(stays) == 1
        stay = stays[0]
        assert stay.checked_out_at is not None
        assert (stay.checked_out_at - stay.checked_in_at) == timedelta(hours=3, seconds=5)
        # No machine session and no relay: the entrance opens nothing.
        assert s.scalar(select(func.count()).select_from(MachineSession)) == 0


def test_attendance_entrance_refuses_unknown_and_blocked_badges(
    bridge: Bridge, reader: Peer, entrance: Database
) -> None:
    for badge, reason in (("DEADBEAF", "unknown_badge"), ("B10CB10C", "badge_blocked")):
        reader.publish(f"{ENTRANCE}/auth/req", _checkin(badge)[1])
        answer = decode_as(AuthResp, reader.next(f"{ENTRANCE}/auth/resp"))
        assert (answer.decision, answer.reason, answer.attendance) == ("deny", reason, None)
    with entrance.session() as s:
        assert s.scalar(select(func.count()).select_from(Attendance)) == 0


def test_attendance_a_machine_device_cannot_check_people_in(
    bridge: Bridge, reader: Peer, entrance: Database
) -> None:
    """A printer's Pi (its SD card in someone's hands) must not make people present."""
    before = bridge.rejected["not_an_entrance"]
    reader.publish("werkbank/v1/dev/pi-printer-1/auth/req", _checkin(QUINN)[1])
    assert wait_until(lambda: bridge.rejected["not_an_entrance"] == before + 1)
    assert reader.drain("werkbank/v1/dev/pi-printer-1/auth/resp") == []
    with entrance.session() as s:
        assert s.scalar(select(func.count()).select_from(Attendance)) == 0

    # Nor by an offline check-in event in its outbox.
    eid = str(uuid.uuid4())
    event = {"v": 1, "id": eid, "ts": "2026-11-18T08:00:00.000Z", "type": "checkin", "badge": QUINN}
    reader.publish("werkbank/v1/dev/pi-printer-1/event", json.dumps(event).encode())
    assert wait_until(lambda: bridge.rejected["not_an_entrance"] == before + 2)
    with entrance.session() as s:
        assert s.scalar(select(func.count()).select_from(Attendance)) == 0
        assert s.get(StoredEvent, eid) is None


def test_attendance_offline_checkin_events_count_once_when_the_outbox_replays(
    bridge: Bridge, reader: Peer, entrance: Database
) -> None:
    ids = []
    for ts in ("2026-11-18T07:30:00.000Z", "2026-11-18T12:00:00.000Z"):
        eid = str(uuid.uuid4())
        ids.append(eid)
        event = json.dumps({"v": 1, "id": eid, "ts": ts, "type": "checkin", "badge": QUINN}).encode()
        reader.publish(f"{ENTRANCE}/event", event)
        reader.publish(f"{ENTRANCE}/event", event)  # QoS 1: a duplicate
    acked: set[str] = set()
    assert wait_until(lambda: acked.update(_acks(reader)) or set(ids) <= acked)
    with entrance.session() as s:
        stays = s.scalars(select(Attendance)).all()
        assert len(stays) == 1 and stays[0].offline
        assert stays[0].checked_out_at is not None
        assert stays[0].checked_out_at - stays[0].checked_in_at == timedelta(hours=4, minutes=30)


def _acks(reader: Peer) -> set[str]:
    return {i for raw in reader.drain(f"{ENTRANCE}/ack") for i in json.loads(raw)["ids"]}


# -- presence ---------------------------------------------------------------------------------


def _site(s) -> Site:  # type: ignore[no-untyped-def]
    site = s.scalar(select(Site))
    assert site is not None
    return site


def test_attendance_presence_merges_stays_and_machine_sessions(entrance: Database) -> None:
    day = date(2026, 11, 18)
    with entrance.session() as s:
        site, quinn = _site(s), person(s, "Quinn Qualified")
        printer = s.scalar(select(Machine).where(Machine.slug == "printer-1"))
        assert printer is not None
        s.add(
            Attendance(
                person_id=quinn.id, site_id=site.id, checked_in_at=at(day, 9), checked_out_at=at(day, 12)
            )
        )
        # Printing 11:00-13:30 overlaps the stay: 9:00-13:30 = 4.5 h, not 5.5 h.
        s.add(
            MachineSession(
                id=str(uuid.uuid4()),
                machine_id=printer.id,
                device_id="pi-printer-1",
                person_id=quinn.id,
                started_at=at(day, 11),
                ended_at=at(day, 13, 30),
                unlocked_s=9000.0,
            )
        )
        # A session the next day without a stay: present that day too.
        s.add(
            MachineSession(
                id=str(uuid.uuid4()),
                machine_id=printer.id,
                device_id="pi-printer-1",
                person_id=quinn.id,
                started_at=at(day + timedelta(days=1), 10),
                ended_at=at(day + timedelta(days=1), 11),
                unlocked_s=3600.0,
            )
        )
        s.flush()
        days = attendance.presence(s, [quinn.id], day, day + timedelta(days=2), site.timezone, at(day, 23))[
            quinn.id
        ]
    assert days[day].present_s == 4.5 * 3600
    assert days[day + timedelta(days=1)].present_s == 3600
    assert day + timedelta(days=2) not in days


def test_attendance_forgotten_checkout_closes_at_closing_time_marked(entrance: Database) -> None:
    day = date(2026, 11, 18)  # a Wednesday; the test lab closes at 20:00
    with entrance.session() as s:
        site, quinn = _site(s), person(s, "Quinn Qualified")
        s.add(Attendance(person_id=quinn.id, site_id=site.id, checked_in_at=at(day, 9)))
    assert close_forgotten_checkins(entrance, at(day, 19, 59)) == 0
    assert close_forgotten_checkins(entrance, at(day, 20, 5)) == 1
    assert close_forgotten_checkins(entrance, at(day, 21)) == 0  # idempotent
    with entrance.session() as s:
        stay = s.scalars(select(Attendance)).one()
        assert stay.auto_closed and stay.checked_out_at == at(day, 20)
        assert s.scalar(select(AuditLog).where(AuditLog.action == "attendance.auto_closed")) is not None
        sheet = attendance.month_sheet(s, _site(s), day, at(day, 21), person_ids=[stay.person_id])
        assert sheet.rows[0].days[day].auto_closed and sheet.rows[0].hours == 11.0


def test_attendance_absences_count_expected_days_only(entrance: Database) -> None:
    """Mon/Wed expected; a closed day, days before joining and days to come are no absences."""
    with entrance.session() as s:
        site, quinn = _site(s), person(s, "Quinn Qualified")
        quinn.created_at = at(date(2026, 11, 1), 8)
        attendance.set_timetable(s, site.id, "Cohort A", [(0, time(9), time(15)), (2, time(9), time(15))])
        s.add(ClosedDay(site_id=site.id, day=date(2026, 11, 4), reason="holiday"))
        s.add(
            Attendance(
                person_id=quinn.id,
                site_id=site.id,
                checked_in_at=at(date(2026, 11, 2), 9),
                checked_out_at=at(date(2026, 11, 2), 15),
            )
        )
        s.flush()
        now = at(date(2026, 11, 18), 18)
        sheet = attendance.month_sheet(s, site, date(2026, 11, 1), now, cohort="Cohort A")
        row = next(r for r in sheet.rows if r.person.id == quinn.id)
        # Expected: Mon 2 (present), Wed 4 (closed), Mon 9, Wed 11, Mon 16, Wed 18 -> 4 absences.
        assert row.days_present == 1 and row.hours == 6.0
        assert row.absences == 4
        assert date(2026, 11, 23) not in row.days  # still to come
        # Earlier on Wednesday 18, before the cohort's day (9 to 15) is over, it is no absence yet.
        morning = attendance.month_sheet(
            s, site, date(2026, 11, 1), at(date(2026, 11, 18), 8), cohort="Cohort A"
        )
        early = next(r for r in morning.rows if r.person.id == quinn.id)
        assert early.absences == 3 and date(2026, 11, 18) not in early.days


def test_attendance_correction_replaces_the_day_and_is_audited(entrance: Database) -> None:
    day = date(2026, 11, 16)
    now = at(date(2026, 11, 18), 10)
    with entrance.session() as s:
        tina, quinn = person(s, "Tina Trainer"), person(s, "Quinn Qualified")
        attendance.set_timetable(s, quinn.site_id, "Cohort A", [(0, time(9), time(15))])
        attendance.correct_day(s, tina, quinn, day, 5 * 3600.0, False, "badge forgotten at home", now)
        s.flush()
        sheet = attendance.month_sheet(s, quinn.site, day, now, person_ids=[quinn.id])
        assert sheet.rows[0].days[day].present_s == 5 * 3600
        assert sheet.rows[0].absences == 0
        entry = s.scalar(select(AuditLog).where(AuditLog.action == "attendance.corrected"))
        assert entry is not None and entry.detail["reason"] == "badge forgotten at home"

        with pytest.raises(TrainingError) as missing:
            attendance.correct_day(s, tina, quinn, day, 0, True, "  ", now)
        assert missing.value.code == "reason_required"


def test_attendance_cohort_certificates_count_each_persons_own_period(entrance: Database) -> None:
    """A cohort's participation certificates are computed together (one presence query for all),
    yet each counts only its holder's period: from joining (or an earlier first session) to the
    exit, with corrections; the same facts as a certificate issued alone."""
    start = date(2026, 11, 2)  # a Monday
    now = at(start + timedelta(days=20), 12)
    with entrance.session() as s:
        site, tina = _site(s), person(s, "Tina Trainer")
        quinn, uma = person(s, "Quinn Qualified"), person(s, "Uma Unqualified")
        printer = s.scalar(select(Machine).where(Machine.slug == "printer-1"))
        assert printer is not None
        uma.cohort = quinn.cohort
        quinn.created_at = at(start, 8)
        uma.created_at = at(start + timedelta(days=3), 8)

        def stay(who: Person, day: date, hours: int) -> None:
            s.add(
                Attendance(
                    person_id=who.id,
                    site_id=site.id,
                    checked_in_at=at(day, 9),
                    checked_out_at=at(day, 9 + hours),
                )
            )

        # Quinn printed ten days before joining (his period starts then), was there on the
        # 3rd, left on the 7th (exit) and came by on the 9th (after his period).
        s.add(
            MachineSession(
                id=str(uuid.uuid4()),
                machine_id=printer.id,
                device_id="pi-printer-1",
                person_id=quinn.id,
                started_at=at(start - timedelta(days=10), 10),
                ended_at=at(start - timedelta(days=10), 12),
                unlocked_s=7200.0,
            )
        )
        stay(quinn, start + timedelta(days=1), 3)
        stay(quinn, start + timedelta(days=7), 2)
        s.add(
            ParticipantExit(
                person_id=quinn.id,
                site_id=site.id,
                left_on=start + timedelta(days=5),
                reason=ExitReason.EMPLOYMENT,
                follow_up_due=start + timedelta(days=180),
            )
        )
        # Uma was there before joining (not hers to certify) and on the 6th, corrected to 6 h.
        stay(uma, start + timedelta(days=1), 4)
        stay(uma, start + timedelta(days=4), 2)
        s.flush()
        attendance.correct_day(
            s, tina, uma, start + timedelta(days=4), 6 * 3600.0, False, "forgot to tap", now
        )

        issued, skipped = certificates.issue_for_cohort(
            s, tina, site.id, quinn.cohort or "", CertificateKind.PARTICIPATION, "en", now
        )
        assert skipped == []
        facts = {c.person_id: c.facts for c in issued}
        period = ("from", "to", "days", "hours")
        assert tuple(facts[quinn.id][k] for k in period) == (
            (start - timedelta(days=10)).isoformat(),
            (start + timedelta(days=5)).isoformat(),
            2,
            5.0,
        )
        assert tuple(facts[uma.id][k] for k in period) == (
            (start + timedelta(days=3)).isoformat(),
            (start + timedelta(days=20)).isoformat(),
            1,
            6.0,
        )
        for who in (quinn, uma):
            alone = certificates.participation_facts(s, who, now)
            assert {k: facts[who.id][k] for k in alone} == alone


def test_attendance_staff_rule_refuses_own_records_and_other_sites(entrance: Database) -> None:
    now = at(date(2026, 11, 18), 10)
    with entrance.session() as s:
        tina, quinn = person(s, "Tina Trainer"), person(s, "Quinn Qualified")
        with pytest.raises(TrainingError) as own:
            attendance.correct_day(s, tina, tina, date(2026, 11, 17), 8 * 3600.0, False, "I was here", now)
        assert own.value.code == "own_records" and own.value.forbidden

        other = Site(slug="elsewhere", name="Elsewhere")
        s.add(other)
        s.flush()
        stranger = Person(site_id=other.id, name="Olga Other", is_trainer=True, is_participant=False)
        s.add(stranger)
        s.flush()
        before = REFUSALS["other_site"]
        with pytest.raises(TrainingError) as far:
            attendance.correct_day(s, stranger, quinn, date(2026, 11, 17), 8 * 3600.0, False, "x", now)
        assert far.value.code == "other_site"
        s.rollback()
        assert audit_refusal(s, far.value, source="web")
        s.commit()
        assert REFUSALS["other_site"] == before + 1
        refused = s.scalar(select(AuditLog).where(AuditLog.action == "training.refused"))
        assert refused is not None and refused.detail["change"] == "attendance"

        participant = person(s, "Uma Unqualified")
        with pytest.raises(TrainingError) as nobody:
            attendance.correct_day(s, participant, quinn, date(2026, 11, 17), 0, False, "x", now)
        assert nobody.value.code == "not_a_trainer"
