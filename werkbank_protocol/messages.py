"""Message types of protocol v1 with their validation.

Every payload is decoded straight into a typed ``msgspec.Struct``; a payload that is
not JSON, has the wrong ``v``, a field of the wrong type, a badge that is not
upper-case hex or an unknown event type raises :class:`ProtocolError` with a
sentence a person can act on. Unknown *extra* fields are ignored, so that
documented additions (docs/protocol.md) stay compatible in both directions.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from werkbank_protocol.errors import ProtocolError
from werkbank_protocol.timefmt import TS_PATTERN

V = Literal[1]
Uuid = Annotated[
    str, Meta(pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
]
Ts = Annotated[str, Meta(pattern=TS_PATTERN)]
# 4-, 7- and 10-byte ISO 14443 UIDs, upper-case hex.
BADGE_PATTERN = r"^(?:[0-9A-F]{8}|[0-9A-F]{14}|[0-9A-F]{20})$"
Badge = Annotated[str, Meta(pattern=BADGE_PATTERN)]
Seconds = Annotated[float, Meta(ge=0)]
# Addition (docs/protocol.md): the sender's boot id (Linux /proc/sys/kernel/random/boot_id) and
# its monotonic boot clock in seconds. Two messages with the same `boot` share one clock that
# no wall-clock step moves, so the server can measure between them or map them onto its own time.
BootId = Annotated[str, Meta(max_length=64)]
ShortText = Annotated[str, Meta(max_length=500)]

# Addition (docs/protocol.md): "checkin", a tap at an entrance reader (no relay, no session).
Mode = Literal["use", "supervise", "certify", "checkin"]
# Addition (docs/protocol.md): "enrol" asks an enrolment station's server for the keys to write
# onto the new secure badge lying on its reader (the answer's `enrolment`).
ReqMode = Literal["use", "supervise", "certify", "checkin", "enrol"]
# Addition (docs/protocol.md): how the tapped card proved itself at the reader. "ok": it holds
# the key the reader asked for; "failed": asked, it could not (a clone); "none": not asked
# (the reader has no key for this UID). Left out by readers that only read UIDs.
CardAuth = Literal["ok", "failed", "none"]
CardSecurity = Literal["uid", "secure", "secure_required"]
MachineState = Literal["locked", "unlocked", "running", "draining", "fault", "maintenance"]
Reason = Literal[
    "ok",
    "unknown_badge",
    "badge_blocked",
    "person_inactive",
    "not_qualified",
    "qualification_expired",
    "machine_maintenance",
    "booked_by_other",
    "outside_opening_hours",
    "session_limit",
    "trainer_required",
    "bad_request",
    # Addition (docs/protocol.md): the card answered with a known UID but did not prove the
    # badge's key (or a plain UID where the badge or the site needs proof).
    "badge_not_genuine",
]
REASONS: tuple[str, ...] = Reason.__args__  # type: ignore[attr-defined]
EndReason = Literal[
    "tap_out", "idle_timeout", "booking_end", "max_duration", "remote_lock", "power_loss_recovered"
]
END_REASONS: tuple[str, ...] = EndReason.__args__  # type: ignore[attr-defined]

# Addition (docs/protocol.md): ceilings of the health figures in `status`. Far above anything
# real (a million events is years of a machine offline; ten years of age is older than the
# Pi), so a value beyond them is a bug at the sender (an epoch time sent as an age), refused.
MAX_OUTBOX_DEPTH = 1_000_000
MAX_HEALTH_AGE_S = 10 * 365.25 * 86400

# Largest payload accepted on any topic but `allowlist` (a list for hundreds of people).
MAX_PAYLOAD = 16 * 1024
MAX_ALLOWLIST_PAYLOAD = 4 * 1024 * 1024


class Status(Struct, kw_only=True):
    v: V
    online: bool
    state: MachineState | None = None
    machine: str | None = None
    fw: Annotated[str, Meta(max_length=64)] | None = None
    config: Annotated[str, Meta(max_length=128)] | None = None
    allowlist_version: Annotated[int, Meta(ge=0)] | None = None
    ts: Ts | None = None
    # Addition (docs/protocol.md): when `ts` was taken, on the agent's boot clock.
    boot: BootId | None = None
    mono_s: Seconds | None = None
    # Addition (docs/protocol.md): the agent's health, so the server can tell that events are
    # not arriving or that the offline allow-list is old. Events in the outbox not yet
    # acknowledged; how long the oldest of them has waited, on the agent's boot clock (absent
    # when none waits); and how old the held allow-list is (absent when none is held).
    outbox_depth: Annotated[int, Meta(ge=0, le=MAX_OUTBOX_DEPTH)] | None = None
    outbox_oldest_s: Annotated[float, Meta(ge=0, le=MAX_HEALTH_AGE_S)] | None = None
    allowlist_age_s: Annotated[float, Meta(ge=0, le=MAX_HEALTH_AGE_S)] | None = None


class AuthReq(Struct, kw_only=True):
    v: V
    id: Uuid
    ts: Ts
    badge: Badge
    mode: ReqMode = "use"
    trainer_badge: Badge | None = None
    # Addition (docs/protocol.md): when `ts` was taken, on the agent's boot clock.
    boot: BootId | None = None
    mono_s: Seconds | None = None
    card_auth: CardAuth | None = None

    def __post_init__(self) -> None:
        if self.mode in ("supervise", "certify") and self.trainer_badge is None:
            raise ValueError(f"mode {self.mode!r} needs the trainer's badge in `trainer_badge`")


HexKey = Annotated[str, Meta(pattern=r"^[0-9a-f]{88}$")]  # a wrapped AES-128 key (cardkeys.wrap)


class EnrolGrant(Struct, kw_only=True):
    """Addition (docs/protocol.md): the keys an enrolment station writes onto one new card.

    ``keys[n]`` is the card's key number n, wrapped for this device (cardkeys.wrap) with
    context ``"<enrolment>:<badge>:<n>"``."""

    enrolment: Uuid
    badge: Badge
    keys: Annotated[list[HexKey], Meta(min_length=5, max_length=5)]


Language = Annotated[str, Meta(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")]


class AuthResp(Struct, kw_only=True):
    v: V
    req: Uuid
    decision: Literal["allow", "deny"]
    reason: Reason
    message: dict[str, str]
    session: Uuid | None = None
    person: str | None = None
    until: Ts | None = None
    # Addition (docs/protocol.md): the person allowed in mode `use` is a trainer for this
    # machine type, so the agent opens the trainer window.
    trainer: bool = False
    # Addition (docs/protocol.md): the language of the person who tapped, a key of `message`,
    # so a display or log at the machine shows that one first.
    lang: Language | None = None
    # Addition (docs/protocol.md): why the session ends at `until`. "booking": a booking begins
    # or ends then, so the agent ends the session with reason `booking_end` (and warns before).
    until_reason: Literal["booking"] | None = None
    # Addition (docs/protocol.md): seconds from the decision until `until`. The agent counts them
    # down on its monotonic clock from the moment the answer arrives, so a wrong wall clock at the
    # machine cannot stretch or cut the unlock; without it the agent takes `until` minus its own
    # clock, once, at that moment.
    until_s: Seconds | None = None
    # Addition (docs/protocol.md): mode "enrol", allowed: what to write onto the card.
    enrolment: EnrolGrant | None = None
    # Addition (docs/protocol.md): the answer to a `checkin` tap: the person is now checked in
    # ("in"), checked out ("out"), or tapped twice within a minute of checking in ("repeat").
    attendance: Literal["in", "out", "repeat"] | None = None


class _Event(Struct, kw_only=True, tag_field="type"):
    v: V
    id: Uuid
    ts: Ts
    session: Uuid | None = None
    # Addition (docs/protocol.md): when the event happened, on the agent's boot clock.
    boot: BootId | None = None
    mono_s: Seconds | None = None


class SessionStarted(_Event, tag="session_started"):
    session: Uuid
    badge: Badge
    offline: bool = False
    mode: Mode = "use"
    # Addition: the trainer's badge for supervise/certify sessions (docs/protocol.md).
    trainer_badge: Badge | None = None


class SessionEnded(_Event, tag="session_ended"):
    session: Uuid
    reason: EndReason
    unlocked_s: Seconds
    run_s: Seconds = 0.0


class JobStarted(_Event, tag="job_started"):
    session: Uuid
    job: Uuid
    kind: Literal["print", "cut", "other"] = "other"
    file: ShortText | None = None
    estimated_s: Seconds | None = None


class JobFinished(_Event, tag="job_finished"):
    session: Uuid
    job: Uuid
    status: Literal["completed", "cancelled", "failed"]
    duration_s: Seconds
    filament_mm: Seconds | None = None
    filament_g: Seconds | None = None


class Fault(_Event, tag="fault"):
    code: Annotated[str, Meta(max_length=64)]
    detail: ShortText = ""


class LockDeferred(_Event, tag="lock_deferred"):
    why: Annotated[str, Meta(max_length=64)] = "job_running"


class BadgeEnrolled(_Event, tag="badge_enrolled"):
    """Addition (docs/protocol.md): an enrolment station wrote and checked the keys of a new
    secure badge; the server links it to the enrolment's person."""

    enrolment: Uuid
    badge: Badge


class CheckinTap(_Event, tag="checkin"):
    """Addition (docs/protocol.md): a tap at an entrance reader that the server did not answer;
    the agent's outbox reports it later and the server checks the badge in or out then."""

    badge: Badge


Event = (
    SessionStarted
    | SessionEnded
    | JobStarted
    | JobFinished
    | Fault
    | LockDeferred
    | BadgeEnrolled
    | CheckinTap
)
EVENT_TYPES: tuple[str, ...] = (
    "session_started",
    "session_ended",
    "job_started",
    "job_finished",
    "fault",
    "lock_deferred",
    "badge_enrolled",
    "checkin",
)


class Ack(Struct, kw_only=True):
    v: V
    ids: list[Uuid]


class Telemetry(Struct, kw_only=True):
    v: V
    ts: Ts
    running: bool
    session: Uuid | None = None
    power_w: Annotated[float, Meta(ge=0)] | None = None
    progress: Annotated[float, Meta(ge=0, le=100)] | None = None
    temps: dict[str, Any] | None = None
    # The smart plug's energy counter (Wh; grows, restarts at 0 when the plug is reset).
    energy_wh: Annotated[float, Meta(ge=0)] | None = None


class Cmd(Struct, kw_only=True):
    v: V
    id: Uuid
    type: Literal["lock", "unlock", "refresh_allowlist", "reload_config", "identify"]
    session: Uuid | None = None
    reason: ShortText | None = None
    force: bool = False


class AllowlistEntry(Struct, kw_only=True):
    badge_hash: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    until: Ts | None = None
    trainer: bool = False


class CardKey(Struct, kw_only=True):
    """Addition (docs/protocol.md): a secure badge's key in this machine's slot, wrapped for
    this machine (cardkeys.wrap, context: the badge hash)."""

    badge_hash: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    key: HexKey


class Allowlist(Struct, kw_only=True):
    v: V
    version: Annotated[int, Meta(ge=0)]
    issued: Ts
    expires: Ts
    machine: str
    entries: list[AllowlistEntry]
    sig: str = ""
    # Additions (docs/protocol.md): the site's card rule, the key number this machine checks,
    # and the keys of the site's secure badges in that slot.
    card_security: CardSecurity = "uid"
    card_slot: Annotated[int, Meta(ge=1, le=4)] = 1
    cards: list[CardKey] = []


class SimTap(Struct, kw_only=True):
    """Addition (docs/protocol.md): a badge presented to a *simulated* reader."""

    v: V
    badge: Badge
    id: Uuid | None = None


T = TypeVar("T")

_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
_encoder = msgspec.json.Encoder()


def decode(kind: Any, payload: bytes, max_size: int = MAX_PAYLOAD) -> Any:
    """Decode and validate ``payload`` as ``kind`` (a Struct or the Event union).

    Raises ProtocolError with code ``too_large``, ``not_json``, ``wrong_version`` or ``invalid``.
    """
    if len(payload) > max_size:
        raise ProtocolError("too_large", f"payload of {len(payload)} bytes is over the {max_size} byte limit")
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise _explain(payload, str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise ProtocolError("not_json", f"payload is not UTF-8 JSON ({exc})") from exc
    except RecursionError as exc:
        # msgspec gives up cleanly at the interpreter's recursion limit; no message nests that deep.
        raise _too_deep() from exc


def _too_deep() -> ProtocolError:
    return ProtocolError("invalid", "JSON nested too deep; protocol messages nest a few levels at most")


class _RequestId(Struct):
    id: Any = None


_request_id_decoder = msgspec.json.Decoder(_RequestId)


def request_id(payload: bytes, max_size: int = MAX_PAYLOAD) -> str | None:
    """The ``id`` of a JSON object payload that failed validation, if it has a readable one, so
    that a garbled request can still be answered. None for anything else, never an exception."""
    if len(payload) > max_size:
        return None  # not parsed at all: a flood of big payloads must not cost memory
    try:
        found = _request_id_decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return None
    return found.id if isinstance(found.id, str) else None


_HINTS = {
    "$.badge": "badge must be the card UID as upper-case hex, 8, 14 or 20 characters",
    "$.trainer_badge": "trainer_badge must be the card UID as upper-case hex, 8, 14 or 20 characters",
    "$.ts": "ts must be an RFC 3339 time such as 2026-11-22T08:15:03.120Z",
    "$.id": "id must be a UUID",
    "$.session": "session must be a UUID",
}


def _explain(payload: bytes, text: str) -> ProtocolError:
    """Turn msgspec's validation message into a ProtocolError a person can act on."""
    try:
        raw = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        raw = None
    except RecursionError:
        return _too_deep()
    if isinstance(raw, dict) and raw.get("v") != 1:
        return ProtocolError("wrong_version", f"'v' is {raw.get('v')!r}; this side speaks protocol v1 only")
    if text.startswith("Invalid value") and text.endswith("at `$.type`"):
        return ProtocolError("unknown_type", f"{text}; known event types: {', '.join(EVENT_TYPES)}")
    for path, hint in _HINTS.items():
        if text.endswith(f"at `{path}`"):
            return ProtocolError("invalid", f"{hint} ({text})")
    return ProtocolError("invalid", text)


def decode_as(kind: type[T], payload: bytes, max_size: int = MAX_PAYLOAD) -> T:
    """Typed form of :func:`decode` for a single Struct type."""
    result: T = decode(kind, payload, max_size)
    return result


def decode_event(payload: bytes) -> Event:
    result: Event = decode(Event, payload)
    return result


def encode(message: Struct) -> bytes:
    return _encoder.encode(message)


def to_builtins(message: Struct) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.to_builtins(message)
    return result
