"""The domain (docs/architecture.md, "Domain words") as typed SQLAlchemy 2 models.

Names follow the domain words. The one exception: a *Session* (one unlock of a
machine) is ``MachineSession`` in code, so it never gets confused with a database
session; its table is ``sessions``.
"""

from __future__ import annotations

import enum
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    Time,
    TypeDecorator,
    UniqueConstraint,
    false,
    func,
    text,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates
from sqlalchemy.sql.elements import ColumnElement

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_uuid() -> str:
    return str(uuid.uuid4())


def in_language(name: str, name_de: str | None, language: str) -> str:
    """A name for a reader: its German form for German readers when it has one, else English.

    The one place that picks: every page, machine message, notification, e-mail and export
    that names a site, machine type, competency or training step goes through here."""
    return name_de if language == "de" and name_de else name


@dataclass(frozen=True)
class LocalName:
    """A name with its German form, carried until the reader is known (a refusal's or a
    message's placeholder): ``in_language`` then, English where no reader is (``str``, logs)."""

    en: str
    de: str | None = None

    def __str__(self) -> str:
        return self.en

    def in_language(self, language: str) -> str:
        return in_language(self.en, self.de, language)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every database (SQLite forgets time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as plain strings (values, not names), so reports and SQL stay readable.
    return Enum(cls, native_enum=False, values_callable=lambda e: [m.value for m in e], length=32)


class BadgeStatus(enum.StrEnum):
    ACTIVE = "active"
    LOST = "lost"
    BLOCKED = "blocked"


class BadgeKind(enum.StrEnum):
    """``uid``: the card's UID alone (copyable); ``secure``: an enrolled NTAG 424 DNA that proves its key."""

    UID = "uid"
    SECURE = "secure"


class CardSecurity(enum.StrEnum):
    """A site's rule for badges (docs/security.md, "Cards")."""

    UID = "uid"  # UIDs only, as before: no card is asked for a key
    SECURE = "secure"  # secure badges must prove their key; plain UID badges still work (weaker)
    SECURE_REQUIRED = "secure_required"  # only a card that proves its key unlocks


class EnrolmentStatus(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    CANCELLED = "cancelled"


class MachineStatus(enum.StrEnum):
    AVAILABLE = "available"
    MAINTENANCE = "maintenance"
    DISABLED = "disabled"


class Level(enum.StrEnum):
    """Competency levels, in order."""

    BRIEFED = "briefed"
    SUPERVISED = "supervised"
    INDEPENDENT = "independent"
    TRAINER = "trainer"

    @property
    def rank(self) -> int:
        return _LEVEL_RANKS[self]


_LEVEL_RANKS = {level: rank for rank, level in enumerate(Level)}  # (every tap compares levels)


class QualificationAction(enum.StrEnum):
    GRANTED = "granted"
    RENEWED = "renewed"
    EXPIRED = "expired"
    REVOKED = "revoked"


class Site(Base):
    __tablename__ = "sites"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    name_de: Mapped[str | None] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="Europe/Berlin")
    card_security: Mapped[CardSecurity] = mapped_column(
        _enum(CardSecurity), default=CardSecurity.UID, server_default=CardSecurity.UID.value
    )
    # AES-128 master of every secure badge's keys at this site (hex; made on first use). It never
    # leaves the server: machines get per-card keys diversified from it (werkbank_protocol.cardkeys).
    card_master_key: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The letterhead of the site's documents (certificates, attendance sheets): postal address
    # (lines) and a logo as a data URL (set on the admin's site page: PNG or JPEG, checked and
    # encoded anew by server.services.letterhead), both optional.
    address: Mapped[str | None] = mapped_column(Text)
    logo: Mapped[str | None] = mapped_column(Text)

    machines: Mapped[list[Machine]] = relationship(back_populates="site")

    def display_name(self, language: str) -> str:
        return in_language(self.name, self.name_de, language)

    @property
    def local_name(self) -> LocalName:
        return LocalName(self.name, self.name_de)


class Person(Base):
    __tablename__ = "people"

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_participant: Mapped[bool] = mapped_column(Boolean, default=True)
    is_trainer: Mapped[bool] = mapped_column(Boolean, default=False)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    cohort: Mapped[str | None] = mapped_column(String(100))
    programme: Mapped[str | None] = mapped_column(String(100))
    language: Mapped[str] = mapped_column(String(8), default="de")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # The programme's own participant number (CSV imports match on it, reports carry it).
    external_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    # Secret in the URL of the person's calendar feed (.ics): calendar apps cannot log in.
    calendar_token: Mapped[str | None] = mapped_column(String(64), unique=True)
    # Set when the person's personal data was erased (server.services.privacy): the row stays,
    # under a pseudonym, so machine hours and qualification counts still add up.
    erased_at: Mapped[datetime | None] = mapped_column()
    # Part of every web login's session: raising it ends all of the person's web sessions at
    # once (logout, a new password, a deactivation), whichever browser or worker holds them.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When staff last lifted the person's no-show block: no-shows released before it no longer
    # count towards a block (server.services.bookings); the no-shows themselves stay as they were.
    no_show_block_lifted_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    site: Mapped[Site] = relationship()
    badges: Mapped[list[Badge]] = relationship(back_populates="person")

    @property
    def first_name(self) -> str:
        return self.name.split(" ", 1)[0]

    def end_sessions(self) -> None:
        """Log the person out of every browser (the web's user loader compares the epoch)."""
        self.session_epoch = (self.session_epoch or 0) + 1

    @validates("password_hash", "active")
    def _ends_sessions(self, key: str, value: Any) -> Any:
        # Here, not in each page that changes them: the admin pages, the API, the CSV import and
        # the GDPR erase all set these, and a cookie from before must not outlive any of them.
        # A new person (no id yet) has no sessions to end.
        if self.id is not None and (
            (key == "password_hash" and value != self.password_hash)
            or (key == "active" and not value and self.active)
        ):
            self.end_sessions()
        return value


class Badge(Base):
    __tablename__ = "badges"

    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(String(20), unique=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), index=True)
    status: Mapped[BadgeStatus] = mapped_column(_enum(BadgeStatus), default=BadgeStatus.ACTIVE)
    kind: Mapped[BadgeKind] = mapped_column(
        _enum(BadgeKind), default=BadgeKind.UID, server_default=BadgeKind.UID.value
    )
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_changed_at: Mapped[datetime | None] = mapped_column()
    note: Mapped[str | None] = mapped_column(Text)

    person: Mapped[Person] = relationship(back_populates="badges")


class MachineType(Base):
    __tablename__ = "machine_types"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    name_de: Mapped[str | None] = mapped_column(String(200))
    # What a monitored job is called on this kind of machine (print, cut, other).
    job_kind: Mapped[str] = mapped_column(String(16), default="other")

    requirements: Mapped[list[Requirement]] = relationship(back_populates="machine_type")

    def display_name(self, language: str) -> str:
        return in_language(self.name, self.name_de, language)

    @property
    def local_name(self) -> LocalName:
        return LocalName(self.name, self.name_de)


class Competency(Base):
    __tablename__ = "competencies"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(60), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    name_de: Mapped[str | None] = mapped_column(String(200))
    # A laser safety briefing lapses after 12 months; None = never.
    validity_months: Mapped[int | None] = mapped_column(Integer)
    prerequisite_id: Mapped[int | None] = mapped_column(ForeignKey("competencies.id"))

    prerequisite: Mapped[Competency | None] = relationship(remote_side="Competency.id")
    steps: Mapped[list[TrainingStep]] = relationship(
        back_populates="competency", order_by="TrainingStep.position"
    )

    def display_name(self, language: str) -> str:
        return in_language(self.name, self.name_de, language)

    @property
    def local_name(self) -> LocalName:
        return LocalName(self.name, self.name_de)


class Requirement(Base):
    """A machine type requires a competency at a minimum level."""

    __tablename__ = "requirements"
    __table_args__ = (UniqueConstraint("machine_type_id", "competency_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    machine_type_id: Mapped[int] = mapped_column(ForeignKey("machine_types.id"))
    competency_id: Mapped[int] = mapped_column(ForeignKey("competencies.id"))
    min_level: Mapped[Level] = mapped_column(_enum(Level), default=Level.INDEPENDENT)

    machine_type: Mapped[MachineType] = relationship(back_populates="requirements")
    competency: Mapped[Competency] = relationship()


class StepKind(enum.StrEnum):
    BRIEFING = "briefing"
    SUPERVISED_HOURS = "supervised_hours"
    SIGNOFF = "signoff"


class TrainingStep(Base):
    """A step toward a competency level: briefing, supervised hours, practical sign-off.

    ``kind`` is a :class:`StepKind` value. Briefings and sign-offs are recorded by a trainer
    (:class:`StepRecord`); supervised hours are counted from supervised sessions.
    """

    __tablename__ = "training_steps"

    id: Mapped[int] = mapped_column(primary_key=True)
    competency_id: Mapped[int] = mapped_column(ForeignKey("competencies.id"))
    position: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[str] = mapped_column(String(32))  # briefing | supervised_hours | signoff
    name: Mapped[str] = mapped_column(String(200))
    name_de: Mapped[str | None] = mapped_column(String(200))
    leads_to: Mapped[Level] = mapped_column(_enum(Level))
    hours: Mapped[float | None] = mapped_column(Float)
    # Briefings: the version of what is briefed (e.g. "2026-1"); each record keeps the version
    # that was briefed, so an inspector sees who heard which content.
    content_version: Mapped[str | None] = mapped_column(String(40))

    competency: Mapped[Competency] = relationship(back_populates="steps")

    def display_name(self, language: str) -> str:
        return in_language(self.name, self.name_de, language)

    @property
    def local_name(self) -> LocalName:
        return LocalName(self.name, self.name_de)


class Qualification(Base):
    """One entry in a person's history for a competency. Never updated, only appended."""

    __tablename__ = "qualifications"
    __table_args__ = (Index("ix_qualifications_person_competency", "person_id", "competency_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"))
    competency_id: Mapped[int] = mapped_column(ForeignKey("competencies.id"))
    action: Mapped[QualificationAction] = mapped_column(_enum(QualificationAction))
    level: Mapped[Level] = mapped_column(_enum(Level))
    valid_until: Mapped[date | None] = mapped_column(Date)
    granted_by_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    person: Mapped[Person] = relationship(foreign_keys=[person_id])
    competency: Mapped[Competency] = relationship()


class StepRecord(Base):
    """A trainer recorded that a person completed a training step (on the web or at the machine)."""

    __tablename__ = "step_records"
    __table_args__ = (Index("ix_step_records_person_competency", "person_id", "competency_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"))
    competency_id: Mapped[int] = mapped_column(ForeignKey("competencies.id"))
    step_id: Mapped[int] = mapped_column(ForeignKey("training_steps.id"))
    recorded_by_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    # web | machine | api
    source: Mapped[str] = mapped_column(String(16), default="web")
    # The supervised session a sign-off at the machine happened in, when it did.
    session_id: Mapped[str | None] = mapped_column(String(36))
    note: Mapped[str | None] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)

    step: Mapped[TrainingStep] = relationship()
    recorded_by: Mapped[Person | None] = relationship(foreign_keys=[recorded_by_id])


class Machine(Base):
    __tablename__ = "machines"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    machine_type_id: Mapped[int] = mapped_column(ForeignKey("machine_types.id"))
    status: Mapped[MachineStatus] = mapped_column(_enum(MachineStatus), default=MachineStatus.AVAILABLE)
    max_session_min: Mapped[int] = mapped_column(Integer, default=240)
    idle_timeout_min: Mapped[int] = mapped_column(Integer, default=15)
    guard_min: Mapped[int] = mapped_column(Integer, default=15)
    # Key of the HMAC that signs this machine's allow-list and hides badge UIDs in it.
    allowlist_key: Mapped[str] = mapped_column(String(64), default=lambda: secrets.token_hex(32))
    allowlist_version: Mapped[int] = mapped_column(Integer, default=0)
    # Which of the secure badges' authentication keys (1-4) this machine checks: machines on
    # different slots share no card key (docs/security.md, "Cards").
    card_key_slot: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    allowlist_dirty: Mapped[bool] = mapped_column(Boolean, default=True)
    allowlist_published_at: Mapped[datetime | None] = mapped_column()
    # Bumped by every booking change of this machine, first thing in its transaction: the row
    # lock serialises booking writes per machine, so two people booking one slot cannot both win.
    booking_seq: Mapped[int] = mapped_column(Integer, default=0)
    # Live state as last reported by the agent.
    live_state: Mapped[str | None] = mapped_column(String(16))
    live_running: Mapped[bool] = mapped_column(Boolean, default=False)
    live_session_id: Mapped[str | None] = mapped_column(String(36))
    live_power_w: Mapped[float | None] = mapped_column(Float)
    live_progress: Mapped[float | None] = mapped_column(Float)
    live_updated_at: Mapped[datetime | None] = mapped_column()
    # Machine hours of all time: the sum of its sessions' ``unlocked_s``, a running total kept in
    # the transaction of every change by a flush hook (server.services.hours_total), so the
    # overview reads one column instead of summing every session. Never set it anywhere else.
    hours_total_s: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))

    site: Mapped[Site] = relationship(back_populates="machines")
    machine_type: Mapped[MachineType] = relationship()
    device: Mapped[Device | None] = relationship(back_populates="machine", uselist=False)
    opening_hours: Mapped[list[OpeningHours]] = relationship(
        primaryjoin="Machine.id == OpeningHours.machine_id", viewonly=True
    )


class OpeningHours(Base):
    """Opening hours of a site, or of one machine when machine_id is set (these then win)."""

    __tablename__ = "opening_hours"

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    machine_id: Mapped[int | None] = mapped_column(ForeignKey("machines.id"), index=True)
    weekday: Mapped[int] = mapped_column(Integer)  # Monday = 0
    opens: Mapped[time] = mapped_column(Time)
    closes: Mapped[time] = mapped_column(Time)


class Device(Base):
    """A Pi agent serving one machine."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    machine_id: Mapped[int | None] = mapped_column(ForeignKey("machines.id"), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str | None] = mapped_column(String(16))
    last_seen: Mapped[datetime | None] = mapped_column()
    agent_version: Mapped[str | None] = mapped_column(String(64))
    config_hash: Mapped[str | None] = mapped_column(String(128))
    allowlist_version: Mapped[int | None] = mapped_column(Integer)
    # May write keys onto new secure badges (its agent runs with [reader] mode = "enrol").
    enrolment_station: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # How far the device's clock is behind the server's, in seconds (negative: ahead), as the
    # bridge measures it from message times (server.services.clocks); None: never measured.
    clock_offset_s: Mapped[float | None] = mapped_column(Float)
    clock_measured_at: Mapped[datetime | None] = mapped_column()
    # A reader at a site's entrance (agent `[reader] mode = "checkin"`): its taps check people
    # in and out; it serves no machine and switches no relay.
    entrance_site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Its health as its last live status said (docs/protocol.md; None from agents that do not
    # report it): events in its outbox not yet acknowledged, how long the oldest has waited (its
    # boot clock; None when none waits), how old its offline allow-list is, and when (server
    # clock) that status arrived.
    outbox_depth: Mapped[int | None] = mapped_column(Integer)
    outbox_oldest_s: Mapped[float | None] = mapped_column(Float)
    allowlist_age_s: Mapped[float | None] = mapped_column(Float)
    health_reported_at: Mapped[datetime | None] = mapped_column()
    # Since when its events have been stuck / its allow-list old, as the scheduler found it (the
    # admins were told then); None when not (server.services.devices.notify_health).
    outbox_stuck_since: Mapped[datetime | None] = mapped_column()
    allowlist_old_since: Mapped[datetime | None] = mapped_column()

    machine: Mapped[Machine | None] = relationship(back_populates="device")


class BadgeEnrolment(Base):
    """An admin's order to issue a secure badge to a person at one enrolment station.

    Pending until the station reports the card it wrote (``badge_enrolled``): only then is a
    badge linked. A card torn away mid-write links nothing; the enrolment stays pending.
    """

    __tablename__ = "badge_enrolments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), index=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    status: Mapped[EnrolmentStatus] = mapped_column(_enum(EnrolmentStatus), default=EnrolmentStatus.PENDING)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The card the station was sent keys for (set when it asks), and the one it reported written.
    uid: Mapped[str | None] = mapped_column(String(20))
    completed_at: Mapped[datetime | None] = mapped_column()

    person: Mapped[Person] = relationship(foreign_keys=[person_id])
    device: Mapped[Device] = relationship()


class SessionReview(enum.StrEnum):
    """Where a supervised session the server did not decide stands with the trainers."""

    PENDING = "pending"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"


class MachineSession(Base):
    """A *Session*: one unlock of a machine, from relay closed to relay open."""

    __tablename__ = "sessions"
    # Today's machine hours (server.services.live.machine_hours_since) read only this index: the
    # unlocked time is in it, so PostgreSQL sums a machine's sessions without visiting the table.
    __table_args__ = (Index("ix_sessions_machine_hours", "machine_id", "started_at", "unlocked_s"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # Both load their old value when set (active history): the machine-hours hook
    # (server.services.hours_total) moves the difference between the old and the new.
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"), active_history=True)
    device_id: Mapped[str] = mapped_column(String(40))
    person_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"), index=True)
    trainer_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    badge_uid: Mapped[str | None] = mapped_column(String(20))
    mode: Mapped[str] = mapped_column(String(16), default="use")
    offline: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()
    end_reason: Mapped[str | None] = mapped_column(String(32))
    unlocked_s: Mapped[float | None] = mapped_column(Float, active_history=True)
    run_s: Mapped[float | None] = mapped_column(Float)
    # A time was not the device's own: the decision's, or corrected by the device's clock offset.
    # A server default too: bulk writers (server/adapters/demo/history.py) leave the column out.
    time_corrected: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # For staff: "not_allowed_offline" (server.services.reconcile), with the reason code.
    flag: Mapped[str | None] = mapped_column(String(32), index=True)
    flag_reason: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # ``mode`` and ``trainer_id`` above are what the server vouches for (its own decision, or a
    # trainer's confirmation). What the device claimed beyond that is kept here: a supervised
    # session the server did not decide waits for a trainer (server.services.supervision).
    claimed_mode: Mapped[str | None] = mapped_column(String(16))
    claimed_trainer_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    review: Mapped[str | None] = mapped_column(String(16), index=True)  # SessionReview
    reviewed_by_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    reviewed_at: Mapped[datetime | None] = mapped_column()
    # Energy from the device's telemetry (server.services.energy): None = never metered. The gap
    # is the time between readings too far apart to count; energy_last_* is the last reading
    # counted (its device's clock), all the next telemetry window needs.
    energy_wh: Mapped[float | None] = mapped_column(Float)
    energy_gap_s: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    energy_source: Mapped[str | None] = mapped_column(String(8))  # counter, power or mixed
    energy_last_at: Mapped[datetime | None] = mapped_column()
    energy_last_w: Mapped[float | None] = mapped_column(Float)
    energy_last_wh: Mapped[float | None] = mapped_column(Float)

    machine: Mapped[Machine] = relationship()
    person: Mapped[Person | None] = relationship(foreign_keys=[person_id])
    trainer: Mapped[Person | None] = relationship(foreign_keys=[trainer_id])
    claimed_trainer: Mapped[Person | None] = relationship(foreign_keys=[claimed_trainer_id])
    reviewed_by: Mapped[Person | None] = relationship(foreign_keys=[reviewed_by_id])
    jobs: Mapped[list[Job]] = relationship(back_populates="session", order_by="Job.started_at")

    @property
    def is_open(self) -> bool:
        return self.ended_at is None


def session_newest() -> ColumnElement[datetime]:
    """When a session happened, for "newest first": its start, else (an "ended" event came
    before the "started" one) its end, else when the server first heard of it."""
    return func.coalesce(MachineSession.started_at, MachineSession.ended_at, MachineSession.created_at)


# A machine's newest sessions without sorting them all (server.services.live.recent_sessions).
Index("ix_sessions_machine_newest", MachineSession.machine_id, session_newest())


class Job(Base):
    """A print or cut inside a session."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"))
    kind: Mapped[str] = mapped_column(String(16), default="other")
    file: Mapped[str | None] = mapped_column(String(500))
    estimated_s: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    status: Mapped[str | None] = mapped_column(String(16))
    duration_s: Mapped[float | None] = mapped_column(Float)
    filament_mm: Mapped[float | None] = mapped_column(Float)
    filament_g: Mapped[float | None] = mapped_column(Float)

    session: Mapped[MachineSession] = relationship(back_populates="jobs")


class StoredEvent(Base):
    """Every agent event, once, by its id: the ledger that makes ingestion idempotent."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_device_ts", "device_id", "ts"),
        Index("ix_events_device_received", "device_id", "received_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(40))
    type: Mapped[str] = mapped_column(String(32))
    session_id: Mapped[str | None] = mapped_column(String(36))
    ts: Mapped[datetime] = mapped_column()
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    payload: Mapped[dict[str, Any]] = mapped_column()
    # ``ts`` is not the device's own (that stays in ``payload``): see MachineSession.time_corrected.
    time_corrected: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # A fault repeated with the same code soon after is counted here, not stored again
    # (server.services.device_claims): ``repeats`` more reports, the newest at ``last_ts``.
    repeats: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_ts: Mapped[datetime | None] = mapped_column()


class AccessDecision(Base):
    """One answered tap (auth/req): who tried which machine, and what the server said."""

    __tablename__ = "access_decisions"
    __table_args__ = (Index("ix_access_decisions_machine_at", "machine_id", "decided_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # the request's id
    device_id: Mapped[str] = mapped_column(String(40))
    machine_id: Mapped[int | None] = mapped_column(ForeignKey("machines.id"))
    badge_uid: Mapped[str] = mapped_column(String(20))
    person_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    mode: Mapped[str] = mapped_column(String(16), default="use")
    # The trainer the server accepted for a supervise or certify tap: ingestion takes a
    # session's trainer from here, never from the device's event.
    trainer_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    decision: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(String(32))
    # Indexed: ingestion finds the decision of a reported session by it.
    session_id: Mapped[str | None] = mapped_column(String(36), index=True)
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)
    response: Mapped[dict[str, Any]] = mapped_column()


class AuditLog(Base):
    """Every grant, revoke, override, remote unlock and data export: who, what, when."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    actor_label: Mapped[str] = mapped_column(String(200), default="system")
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class LoginAttempt(Base):
    """A failed web login, kept for the login limits' window (then pruned).

    In the database, not in a worker's memory, so every web worker counts the same failures.
    ``email_hash`` is a keyed hash of the email tried: the limit per email needs no address book
    of strangers' emails.
    """

    __tablename__ = "login_attempts"
    __table_args__ = (
        Index("ix_login_attempts_address_at", "address", "at"),
        Index("ix_login_attempts_email_hash_at", "email_hash", "at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    address: Mapped[str] = mapped_column(String(64))
    email_hash: Mapped[str] = mapped_column(String(64))


class ApiToken(Base):
    """A token for the JSON API. Only its SHA-256 is stored; the token is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    expires_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()

    person: Mapped[Person] = relationship()


class Notification(Base):
    """Something the app tells a person (e.g. "your laser briefing expires on 3 March").

    Stored as a kind plus parameters, rendered in the reader's language when shown or
    e-mailed. ``key`` makes a reminder idempotent: the scheduler may run twice, the
    person hears it once.
    """

    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("person_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column()
    emailed_at: Mapped[datetime | None] = mapped_column()

    person: Mapped[Person] = relationship()


class BookingStatus(enum.StrEnum):
    BOOKED = "booked"
    CANCELLED = "cancelled"
    RELEASED = "released"  # a no-show, released by the scheduler


class Booking(Base):
    """A machine reserved for a person for a time (with a trainer: a supervised booking)."""

    __tablename__ = "bookings"
    __table_args__ = (
        Index("ix_bookings_machine_starts", "machine_id", "starts_at"),
        Index("ix_bookings_person_starts", "person_id", "starts_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"))
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"))
    trainer_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    starts_at: Mapped[datetime] = mapped_column()
    ends_at: Mapped[datetime] = mapped_column()
    status: Mapped[BookingStatus] = mapped_column(_enum(BookingStatus), default=BookingStatus.BOOKED)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    cancelled_at: Mapped[datetime | None] = mapped_column()
    cancelled_by_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    # The holder's first session on the machine in the booking's window (ingestion sets it).
    checked_in_at: Mapped[datetime | None] = mapped_column()
    released_at: Mapped[datetime | None] = mapped_column()
    no_show: Mapped[bool] = mapped_column(Boolean, default=False)
    reminded_at: Mapped[datetime | None] = mapped_column()

    machine: Mapped[Machine] = relationship()
    person: Mapped[Person] = relationship(foreign_keys=[person_id])
    trainer: Mapped[Person | None] = relationship(foreign_keys=[trainer_id])

    @property
    def hours(self) -> float:
        return (self.ends_at - self.starts_at).total_seconds() / 3600


class BookingPolicy(Base):
    """A site's booking rules (defaults in server.services.bookings when a site has none)."""

    __tablename__ = "booking_policies"

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), unique=True)
    min_slot_min: Mapped[int] = mapped_column(Integer, default=30)
    max_slot_min: Mapped[int] = mapped_column(Integer, default=240)
    # Bookings start and end on this grid (the week view's rows).
    slot_step_min: Mapped[int] = mapped_column(Integer, default=30)
    # How long before its start a booking must be made at the latest, and how far ahead at most.
    min_lead_min: Mapped[int] = mapped_column(Integer, default=0)
    max_ahead_days: Mapped[int] = mapped_column(Integer, default=14)
    # A participant may cancel or move a booking until this long before its start.
    cancel_deadline_min: Mapped[int] = mapped_column(Integer, default=60)
    weekly_quota_h: Mapped[float] = mapped_column(Float, default=8.0)
    # A booking whose holder has not tapped in this long after its start is released.
    no_show_after_min: Mapped[int] = mapped_column(Integer, default=15)
    # This many no-shows within the window block new bookings for the block days.
    no_show_limit: Mapped[int] = mapped_column(Integer, default=3)
    no_show_window_days: Mapped[int] = mapped_column(Integer, default=30)
    no_show_block_days: Mapped[int] = mapped_column(Integer, default=14)
    reminder_before_min: Mapped[int] = mapped_column(Integer, default=60)


class CohortQuota(Base):
    """Weekly booking hours for one cohort of a site (overrides the site's quota)."""

    __tablename__ = "cohort_quotas"
    __table_args__ = (UniqueConstraint("site_id", "cohort"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    cohort: Mapped[str] = mapped_column(String(100))
    weekly_hours: Mapped[float] = mapped_column(Float)


class ClosedDay(Base):
    """A day a site (or one machine, when machine_id is set) is closed: holidays, maintenance days."""

    __tablename__ = "closed_days"
    __table_args__ = (Index("ix_closed_days_site_day", "site_id", "day"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    machine_id: Mapped[int | None] = mapped_column(ForeignKey("machines.id"))
    day: Mapped[date] = mapped_column(Date)
    reason: Mapped[str | None] = mapped_column(String(200))


# --- Utilisation and reporting (issue 6) -------------------------------------------------
# Aggregates kept up to date incrementally (server.services.usage): ingestion and the web
# mark (machine, local day) pairs dirty, the scheduler recomputes just those from the raw
# sessions, jobs, bookings and downtime. Dashboards and reports read only these tables.


class DowntimeKind(enum.StrEnum):
    MAINTENANCE = "maintenance"  # an admin took the machine out of service
    OUT_OF_ORDER = "out_of_order"
    OFFLINE = "offline"  # its device was offline (last will, silence)


class MachineDowntime(Base):
    """A period a machine could not be used; open while ``ended_at`` is null."""

    __tablename__ = "machine_downtime"
    __table_args__ = (Index("ix_machine_downtime_machine_started", "machine_id", "started_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"))
    kind: Mapped[DowntimeKind] = mapped_column(_enum(DowntimeKind))
    started_at: Mapped[datetime] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()
    note: Mapped[str | None] = mapped_column(Text)


class UsageDirty(Base):
    """A machine's local day whose aggregates must be recomputed (the scheduler's work queue)."""

    __tablename__ = "usage_dirty"

    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    marked_at: Mapped[datetime] = mapped_column(default=utcnow)


class UsageDaily(Base):
    """One machine's use on one local day by one participant group (cohort; '' for none)."""

    __tablename__ = "usage_daily"
    __table_args__ = (Index("ix_usage_daily_site_day", "site_id", "day"),)

    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    cohort: Mapped[str] = mapped_column(String(100), primary_key=True, default="")
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    machine_type_id: Mapped[int] = mapped_column(ForeignKey("machine_types.id"))
    sessions: Mapped[int] = mapped_column(Integer, default=0)
    unlocked_s: Mapped[float] = mapped_column(Float, default=0.0)
    run_s: Mapped[float] = mapped_column(Float, default=0.0)
    supervised_s: Mapped[float] = mapped_column(Float, default=0.0)
    jobs: Mapped[int] = mapped_column(Integer, default=0)
    jobs_failed: Mapped[int] = mapped_column(Integer, default=0)
    filament_g: Mapped[float] = mapped_column(Float, default=0.0)
    booked_s: Mapped[float] = mapped_column(Float, default=0.0)
    # Unlocked time of booking holders inside their own bookings.
    booked_used_s: Mapped[float] = mapped_column(Float, default=0.0)
    no_shows: Mapped[int] = mapped_column(Integer, default=0)
    # Sessions' energy spread evenly over their unlocked time, and the gaps it could not count
    # (server.services.energy); server defaults: bulk writers may leave them out.
    energy_wh: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    energy_gap_s: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))


class UsageHourly(Base):
    """Unlocked seconds per machine, local day and hour: the weekday-by-hour heatmap."""

    __tablename__ = "usage_hourly"
    # Unlocked time in the index too: the heatmap sums it from the index alone (migration 0025).
    __table_args__ = (Index("ix_usage_hourly_site_day_hour", "site_id", "day", "hour", "unlocked_s"),)

    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    hour: Mapped[int] = mapped_column(Integer, primary_key=True)
    cohort: Mapped[str] = mapped_column(String(100), primary_key=True, default="")
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    machine_type_id: Mapped[int] = mapped_column(ForeignKey("machine_types.id"))
    unlocked_s: Mapped[float] = mapped_column(Float, default=0.0)


class MachineDayStats(Base):
    """Per machine and local day: opening and downtime seconds (no participant group)."""

    __tablename__ = "machine_day_stats"
    __table_args__ = (Index("ix_machine_day_stats_site_day", "site_id", "day"),)

    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    machine_type_id: Mapped[int] = mapped_column(ForeignKey("machine_types.id"))
    open_s: Mapped[float] = mapped_column(Float, default=0.0)
    maintenance_s: Mapped[float] = mapped_column(Float, default=0.0)
    offline_s: Mapped[float] = mapped_column(Float, default=0.0)


class PersonUsageMonthly(Base):
    """One person's use of one machine in one local month (first day): funder reports."""

    __tablename__ = "person_usage_monthly"
    __table_args__ = (Index("ix_person_usage_monthly_site_month", "site_id", "month"),)

    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), primary_key=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"), primary_key=True)
    month: Mapped[date] = mapped_column(Date, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    machine_type_id: Mapped[int] = mapped_column(ForeignKey("machine_types.id"))
    sessions: Mapped[int] = mapped_column(Integer, default=0)
    unlocked_s: Mapped[float] = mapped_column(Float, default=0.0)
    run_s: Mapped[float] = mapped_column(Float, default=0.0)
    supervised_s: Mapped[float] = mapped_column(Float, default=0.0)
    jobs: Mapped[int] = mapped_column(Integer, default=0)


# --- Proof for participants, Jobcenters and funders (issue 19) ----------------------------


class Attendance(Base):
    """One stay at a site: a check-in tap at the entrance until the check-out tap, or until the
    site's closing time when the person forgot to tap out (``auto_closed``)."""

    __tablename__ = "attendance"
    __table_args__ = (Index("ix_attendance_person_in", "person_id", "checked_in_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"))
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    checked_in_at: Mapped[datetime] = mapped_column()
    checked_out_at: Mapped[datetime | None] = mapped_column()
    auto_closed: Mapped[bool] = mapped_column(Boolean, default=False)
    # The entrance reader, and whether it decided offline (its outbox reported the tap later).
    device_id: Mapped[str | None] = mapped_column(String(40))
    offline: Mapped[bool] = mapped_column(Boolean, default=False)

    person: Mapped[Person] = relationship()


class AttendanceCorrection(Base):
    """A trainer's correction of one person's day: the time present that counts from now on
    (0 = absent), excused or not, with a reason. Appended, never updated: the newest counts."""

    __tablename__ = "attendance_corrections"
    __table_args__ = (Index("ix_attendance_corrections_person_day", "person_id", "day"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"))
    day: Mapped[date] = mapped_column(Date)
    present_s: Mapped[float] = mapped_column(Float, default=0.0)
    excused: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(Text)
    corrected_by_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    corrected_at: Mapped[datetime] = mapped_column(default=utcnow)


class CohortTimetable(Base):
    """When a cohort of a site is expected: one row per weekday and time span."""

    __tablename__ = "cohort_timetables"
    __table_args__ = (Index("ix_cohort_timetables_site_cohort", "site_id", "cohort"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    cohort: Mapped[str] = mapped_column(String(100))
    weekday: Mapped[int] = mapped_column(Integer)  # Monday = 0
    starts: Mapped[time] = mapped_column(Time)
    ends: Mapped[time] = mapped_column(Time)


class CertificateKind(enum.StrEnum):
    PARTICIPATION = "participation"
    COMPETENCE = "competence"


class Certificate(Base):
    """An issued certificate: the facts as they stood, signed (server.services.certificates),
    under a short code that its verification URL and QR code carry."""

    __tablename__ = "certificates"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    kind: Mapped[CertificateKind] = mapped_column(_enum(CertificateKind))
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), index=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    language: Mapped[str] = mapped_column(String(8))
    facts: Mapped[dict[str, Any]] = mapped_column()
    signature: Mapped[str] = mapped_column(String(128))
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    issued_by_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    revoked_at: Mapped[datetime | None] = mapped_column()
    revoked_by_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    revoke_reason: Mapped[str | None] = mapped_column(Text)

    person: Mapped[Person] = relationship(foreign_keys=[person_id])
    site: Mapped[Site] = relationship()


class BriefingConfirmation(Base):
    """The participant's confirmation of a safety briefing (DGUV Vorschrift 1 §4): the content
    version briefed and the signature drawn on the trainer's tablet, kept with the step record."""

    __tablename__ = "briefing_confirmations"

    id: Mapped[int] = mapped_column(primary_key=True)
    step_record_id: Mapped[int] = mapped_column(ForeignKey("step_records.id"), unique=True)
    content_version: Mapped[str | None] = mapped_column(String(40))
    # A data: URL (image/png or image/svg+xml) as the signature pad posted it.
    signature: Mapped[str] = mapped_column(Text)
    signed_at: Mapped[datetime] = mapped_column(default=utcnow)

    record: Mapped[StepRecord] = relationship()


class ExitReason(enum.StrEnum):
    EMPLOYMENT = "employment"
    APPRENTICESHIP = "apprenticeship"
    FURTHER_TRAINING = "further_training"
    OTHER = "other"


class FollowUpStatus(enum.StrEnum):
    EMPLOYED = "employed"
    APPRENTICESHIP = "apprenticeship"
    FURTHER_TRAINING = "further_training"
    UNEMPLOYED = "unemployed"
    UNKNOWN = "unknown"


class ParticipantExit(Base):
    """How a participant left the programme, and where they stood six months later."""

    __tablename__ = "participant_exits"

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), unique=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    # The programme at the exit (the person's may change or be erased later).
    programme: Mapped[str | None] = mapped_column(String(100))
    left_on: Mapped[date] = mapped_column(Date)
    reason: Mapped[ExitReason] = mapped_column(_enum(ExitReason))
    note: Mapped[str | None] = mapped_column(Text)
    recorded_by_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    follow_up_due: Mapped[date] = mapped_column(Date)
    follow_up_status: Mapped[FollowUpStatus | None] = mapped_column(_enum(FollowUpStatus))
    follow_up_on: Mapped[date | None] = mapped_column(Date)
    follow_up_by_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))

    person: Mapped[Person] = relationship(foreign_keys=[person_id])


class ProgrammeTarget(Base):
    """A programme's target of integrations (exits into employment or apprenticeship) in a year."""

    __tablename__ = "programme_targets"
    __table_args__ = (UniqueConstraint("programme", "year"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    programme: Mapped[str] = mapped_column(String(100))
    year: Mapped[int] = mapped_column(Integer)
    integrations: Mapped[int] = mapped_column(Integer)


class FieldKind(enum.StrEnum):
    """What a programme field asks for (the form's input and the check of its value)."""

    TEXT = "text"
    DATE = "date"
    CHOICE = "choice"
    YES_NO = "yes_no"


class ProgrammeField(Base):
    """A piece of participant data a programme asks for (server.services.programme_data).
    ``special``: a special category of personal data (GDPR Art. 9, e.g. health): its values are
    kept apart (:class:`SpecialValue`) and seen only by admins. ``needs_consent``: a value is
    kept only while the person's consent for the programme stands (special ones always)."""

    __tablename__ = "programme_fields"
    __table_args__ = (UniqueConstraint("programme", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    programme: Mapped[str] = mapped_column(String(100))
    # Stable name in exports and the audit log (made from the first English label).
    key: Mapped[str] = mapped_column(String(40))
    label: Mapped[str] = mapped_column(String(200))
    label_de: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[FieldKind] = mapped_column(
        _enum(FieldKind), default=FieldKind.TEXT, server_default=FieldKind.TEXT.value
    )
    # A choice's options, in order: [{"key": "none", "en": "None", "de": "Keiner"}, ...].
    options: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)
    required: Mapped[bool] = mapped_column(Boolean, default=False)
    special: Mapped[bool] = mapped_column(Boolean, default=False)
    needs_consent: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    position: Mapped[int] = mapped_column(Integer, default=0)

    def display_name(self, language: str) -> str:
        return in_language(self.label, self.label_de, language)

    @property
    def local_name(self) -> LocalName:
        return LocalName(self.label, self.label_de)


class ParticipantValue(Base):
    """A person's answer to an ordinary programme field."""

    __tablename__ = "participant_values"

    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), primary_key=True)
    field_id: Mapped[int] = mapped_column(ForeignKey("programme_fields.id"), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime | None] = mapped_column()
    recorded_by_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))


class SpecialValue(Base):
    """A person's answer to a special-category field: a table of its own, read only by the
    admins' pages, the person's own GDPR export and the pseudonymised export."""

    __tablename__ = "special_values"

    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), primary_key=True)
    field_id: Mapped[int] = mapped_column(ForeignKey("programme_fields.id"), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime | None] = mapped_column()
    recorded_by_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))


class ConsentText(Base):
    """One version of what a programme asks participants to agree to. Never edited: a changed
    text is a new version, so every consent keeps pointing at what was agreed."""

    __tablename__ = "consent_texts"
    __table_args__ = (UniqueConstraint("programme", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    programme: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    # At least one of the two; a reader gets theirs, else the other.
    text: Mapped[str | None] = mapped_column(Text)
    text_de: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))

    def in_language(self, language: str) -> tuple[str, str]:
        """(language, text): the reader's language when the version has it, else the other."""
        if language == "de" and self.text_de:
            return "de", self.text_de
        if self.text:
            return "en", self.text
        return "de", self.text_de or ""


class Consent(Base):
    """What a person agreed to for a programme's data, and when (appended; withdrawn stays)."""

    __tablename__ = "consents"

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), index=True)
    programme: Mapped[str] = mapped_column(String(100))
    # The words agreed to, as shown (a copy: the proof does not depend on another row).
    text: Mapped[str] = mapped_column(Text)
    consent_text_id: Mapped[int | None] = mapped_column(ForeignKey("consent_texts.id"))
    version: Mapped[int | None] = mapped_column(Integer)
    language: Mapped[str | None] = mapped_column(String(8))
    agreed_at: Mapped[datetime] = mapped_column()
    recorded_by_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    recorded_at: Mapped[datetime | None] = mapped_column()
    withdrawn_at: Mapped[datetime | None] = mapped_column()
    withdrawn_by_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))


class ProcessHeartbeat(Base):
    """A server process (bridge, scheduler) saying it runs: written every few seconds, read by the
    web's /readyz (docs/deploy.md, "Watching it"). One row per process name."""

    __tablename__ = "process_heartbeats"

    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    seen_at: Mapped[datetime]
    # The bridge: whether it is connected; the scheduler: each job's last run.
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class LabKey(Base):
    """A key of the lab's own, made on first use (server.services.lab_keys): the Ed25519 key
    certificates are signed with (its public half published for offline checks), and the HMAC
    key of the pseudonyms in exports. Kept in the database, so that every process and every
    container uses the same, and ``werkbank backup`` (which encrypts the database) keeps it."""

    __tablename__ = "lab_keys"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    secret: Mapped[str] = mapped_column(Text)  # base64: the private key's 32 bytes, or the HMAC key
    public: Mapped[str | None] = mapped_column(Text)  # base64: an Ed25519 public key's 32 bytes
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
