"""The domain of DESIGN.md as typed SQLAlchemy 2 models.

Names follow the domain words. The one exception: a *Session* (one unlock of a
machine) is ``MachineSession`` in code, so it never gets confused with a database
session; its table is ``sessions``.
"""

from __future__ import annotations

import enum
import secrets
import uuid
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
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates

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
    """A name for a reader: its German form for German readers when it has one, else English."""
    return name_de if language == "de" and name_de else name


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
        return list(Level).index(self)


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
    timezone: Mapped[str] = mapped_column(String(64), default="Europe/Berlin")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    machines: Mapped[list[Machine]] = relationship(back_populates="site")


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
    leads_to: Mapped[Level] = mapped_column(_enum(Level))
    hours: Mapped[float | None] = mapped_column(Float)

    competency: Mapped[Competency] = relationship(back_populates="steps")


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
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    machine: Mapped[Machine | None] = relationship(back_populates="device")


class MachineSession(Base):
    """A *Session*: one unlock of a machine, from relay closed to relay open."""

    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_machine_started", "machine_id", "started_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"))
    device_id: Mapped[str] = mapped_column(String(40))
    person_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"), index=True)
    trainer_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    badge_uid: Mapped[str | None] = mapped_column(String(20))
    mode: Mapped[str] = mapped_column(String(16), default="use")
    offline: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()
    end_reason: Mapped[str | None] = mapped_column(String(32))
    unlocked_s: Mapped[float | None] = mapped_column(Float)
    run_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    machine: Mapped[Machine] = relationship()
    person: Mapped[Person | None] = relationship(foreign_keys=[person_id])
    trainer: Mapped[Person | None] = relationship(foreign_keys=[trainer_id])
    jobs: Mapped[list[Job]] = relationship(back_populates="session", order_by="Job.started_at")

    @property
    def is_open(self) -> bool:
        return self.ended_at is None


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
    __table_args__ = (Index("ix_events_device_ts", "device_id", "ts"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(40))
    type: Mapped[str] = mapped_column(String(32))
    session_id: Mapped[str | None] = mapped_column(String(36))
    ts: Mapped[datetime] = mapped_column()
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    payload: Mapped[dict[str, Any]] = mapped_column()


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
    decision: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(String(32))
    session_id: Mapped[str | None] = mapped_column(String(36))
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


class UsageHourly(Base):
    """Unlocked seconds per machine, local day and hour: the weekday-by-hour heatmap."""

    __tablename__ = "usage_hourly"
    __table_args__ = (Index("ix_usage_hourly_site_day", "site_id", "day"),)

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
