"""What the API reads and writes, as msgspec Structs.

Bodies are decoded strictly (no "1" for 1) and unknown fields are refused; query strings
are converted from text (``limit=10``) but unknown parameters are refused too, so a typo
like ``person=3`` is an error rather than an unfiltered list. ``openapi.yaml`` describes
the same shapes for readers; tests/api/test_api_openapi.py keeps the two in step.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from werkbank_protocol.messages import BADGE_PATTERN

MAX_LIMIT = 500
DEFAULT_LIMIT = 100

Role = Literal["participant", "trainer", "admin"]
BadgeStatusName = Literal["active", "lost", "blocked"]
LevelName = Literal["briefed", "supervised", "independent", "trainer"]
MachineStatusName = Literal["available", "maintenance", "disabled"]
QualificationActionName = Literal["granted", "renewed", "expired", "revoked"]
BookingStatusName = Literal["booked", "cancelled", "released"]

Name = Annotated[str, Meta(min_length=1, max_length=200)]
Email = Annotated[str, Meta(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)]
Language = Annotated[str, Meta(pattern=r"^[a-z]{2,3}$")]
ShortText = Annotated[str, Meta(max_length=100)]
ExternalId = Annotated[str, Meta(min_length=1, max_length=64)]
Slug = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,59}$")]
# Upper or lower case in; stored upper case, as the readers report them.
BadgeUid = Annotated[str, Meta(pattern=BADGE_PATTERN.replace("0-9A-F", "0-9A-Fa-f"))]
Reason = Annotated[str, Meta(max_length=2000)]
Note = Annotated[str, Meta(max_length=2000)]
# Ids fit the database's 32-bit integer columns: a larger one is refused here, not by the driver.
MAX_ID = 2**31 - 1
Id = Annotated[int, Meta(ge=1, le=MAX_ID)]
UtcTime = Annotated[datetime, Meta(tz=True)]


class _In(Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# -- queries ---------------------------------------------------------------------------------------


class Paging(_In):
    limit: Annotated[int, Meta(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT
    offset: Annotated[int, Meta(ge=0, le=MAX_ID)] = 0


class PeopleQuery(Paging):
    site: Slug | None = None
    role: Role | None = None
    active: bool | None = None
    cohort: ShortText | None = None
    email: Annotated[str, Meta(max_length=254)] | None = None


class BadgesQuery(Paging):
    person_id: Id | None = None
    status: BadgeStatusName | None = None


class MachinesQuery(Paging):
    site: Slug | None = None
    status: MachineStatusName | None = None
    type: Slug | None = None


class QualificationsQuery(Paging):
    person_id: Id | None = None
    competency: Slug | None = None
    action: QualificationActionName | None = None
    current_only: bool = False


class SessionsQuery(Paging):
    machine: Slug | None = None
    person_id: Id | None = None
    since: UtcTime | None = None
    until: UtcTime | None = None
    open: bool | None = None


class BookingsQuery(Paging):
    machine: Slug | None = None
    person_id: Id | None = None
    # Bookings overlapping [from, to): "from" is a Python keyword, hence the rename.
    from_: UtcTime | None = msgspec.field(default=None, name="from")
    to: UtcTime | None = None
    status: BookingStatusName | None = None


# -- bodies ----------------------------------------------------------------------------------------


class PersonCreate(_In):
    name: Name
    site: Slug
    email: Email | None = None
    roles: list[Role] = msgspec.field(default_factory=lambda: ["participant"])
    cohort: ShortText | None = None
    programme: ShortText | None = None
    language: Language = "de"
    external_id: ExternalId | None = None
    active: bool = True


class PersonPatch(_In):
    name: Name | UnsetType = UNSET
    site: Slug | UnsetType = UNSET
    email: Email | UnsetType | None = UNSET
    roles: list[Role] | UnsetType = UNSET
    cohort: ShortText | UnsetType | None = UNSET
    programme: ShortText | UnsetType | None = UNSET
    language: Language | UnsetType = UNSET
    external_id: ExternalId | UnsetType | None = UNSET
    active: bool | UnsetType = UNSET


class BadgeCreate(_In):
    uid: BadgeUid
    person_id: Id
    note: Note | None = None


class BadgePatch(_In):
    status: BadgeStatusName | UnsetType = UNSET
    note: Note | UnsetType | None = UNSET


class GrantBody(_In):
    person_id: Id
    competency: Slug
    level: LevelName
    reason: Reason


class RenewBody(_In):
    person_id: Id
    competency: Slug
    reason: Reason | None = None


class RevokeBody(_In):
    person_id: Id
    competency: Slug
    reason: Reason


class StepBody(_In):
    person_id: Id
    step_id: Id
    note: Note | None = None


class BookingCreate(_In):
    machine: Slug
    starts_at: UtcTime
    ends_at: UtcTime
    # Whose booking: the token's own person when absent (staff may book for anyone).
    person_id: Id | None = None
    # A supervised booking: the trainer who will be there.
    trainer_id: Id | None = None
    note: Note | None = None


class BookingMove(_In):
    starts_at: UtcTime
    ends_at: UtcTime


class BookingCancel(_In):
    pass


# -- answers ---------------------------------------------------------------------------------------


class PersonOut(Struct, kw_only=True):
    id: int
    name: str
    email: str | None
    site: str
    roles: list[str]
    cohort: str | None
    programme: str | None
    language: str
    external_id: str | None
    active: bool
    created_at: datetime


class BadgeOut(Struct, kw_only=True):
    uid: str
    person_id: int
    status: str
    issued_at: datetime
    status_changed_at: datetime | None
    note: str | None


class LimitsOut(Struct, kw_only=True):
    max_session_min: int
    idle_timeout_min: int
    guard_min: int


class LiveOut(Struct, kw_only=True):
    state: str | None
    running: bool
    session_id: str | None
    power_w: float | None
    progress: float | None
    updated_at: datetime | None


class DeviceOut(Struct, kw_only=True):
    id: str
    online: bool
    state: str | None
    last_seen: datetime | None
    agent_version: str | None
    allowlist_version: int | None


class RequirementOut(Struct, kw_only=True):
    competency: str
    min_level: str


class MachineOut(Struct, kw_only=True):
    slug: str
    name: str
    site: str
    type: str
    type_name: str
    status: str
    limits: LimitsOut
    live: LiveOut
    device: DeviceOut | None
    requires: list[RequirementOut]


class QualificationOut(Struct, kw_only=True):
    id: int
    person_id: int
    competency: str
    action: str
    level: str
    valid_until: date | None
    granted_by_id: int | None
    reason: str | None
    created_at: datetime


class StepRecordOut(Struct, kw_only=True):
    id: int
    person_id: int
    competency: str
    step_id: int
    step_name: str
    kind: str
    recorded_by_id: int | None
    source: str
    note: str | None
    recorded_at: datetime


class StepResultOut(Struct, kw_only=True):
    record: StepRecordOut
    qualification: QualificationOut | None


class JobOut(Struct, kw_only=True):
    id: str
    kind: str
    file: str | None
    status: str | None
    started_at: datetime | None
    finished_at: datetime | None
    estimated_s: float | None
    duration_s: float | None
    filament_mm: float | None
    filament_g: float | None


class SessionOut(Struct, kw_only=True):
    id: str
    machine: str
    person_id: int | None
    trainer_id: int | None
    badge_uid: str | None
    mode: str
    offline: bool
    started_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    unlocked_s: float | None
    run_s: float | None
    jobs: list[JobOut]


class BookingOut(Struct, kw_only=True):
    id: str
    machine: str
    person_id: int
    trainer_id: int | None
    starts_at: datetime
    ends_at: datetime
    status: str
    note: str | None
    created_at: datetime
    created_by_id: int | None
    cancelled_at: datetime | None
    checked_in_at: datetime | None
    released_at: datetime | None
    no_show: bool
