"""Web logins: the failed-login limits every web worker shares, and the audit of each login.

Three limits over one window, counted in the database (``login_attempts``) so that every
gunicorn worker and every web server on the same database sees the same failures:

* per (address, email): a guesser at one account from one place;
* per address, across emails: password spraying (one password tried at many accounts);
* per email, across addresses: one account guessed at from many places.

A blocked attempt is refused without checking the password and is not stored (so a flood
costs no rows); the block lifts when the oldest failure leaves the window. A successful login
deletes only its own (address, email) failures: what others tried stays counted.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import and_, case, delete, func, or_, select
from sqlalchemy.orm import Session

from server.models import LoginAttempt, Person
from server.services import audit

log = logging.getLogger(__name__)

Limit = Literal["pair", "address", "email"]

# Refused logins in this process, by why: "failed" (wrong password, unknown or inactive
# account) and "throttled:<limit>" (refused unchecked). The audit log holds every process's.
REFUSALS: Counter[str] = Counter()
_refusals_lock = threading.Lock()  # web workers may run threads


def _count(key: str) -> None:
    with _refusals_lock:
        REFUSALS[key] += 1


@dataclass(frozen=True)
class LoginLimits:
    """How many failures within ``window`` each limit allows (settings ``WERKBANK_LOGIN_*``)."""

    per_pair: int = 5
    per_address: int = 20
    per_email: int = 20
    window: timedelta = timedelta(minutes=5)


def email_hash(email: str, key: str) -> str:
    """A keyed hash of a (normalised) email: countable, but no list of the emails strangers tried."""
    return hmac.new(key.encode(), email.strip().lower().encode(), hashlib.sha256).hexdigest()


def _counts(db: Session, address: str, hashed: str, since: datetime) -> tuple[int, int, int]:
    pair = and_(LoginAttempt.address == address, LoginAttempt.email_hash == hashed)
    row = db.execute(
        select(
            func.coalesce(func.sum(case((pair, 1), else_=0)), 0),
            func.coalesce(func.sum(case((LoginAttempt.address == address, 1), else_=0)), 0),
            func.coalesce(func.sum(case((LoginAttempt.email_hash == hashed, 1), else_=0)), 0),
        ).where(
            LoginAttempt.at > since,
            or_(LoginAttempt.address == address, LoginAttempt.email_hash == hashed),
        )
    ).one()
    return int(row[0]), int(row[1]), int(row[2])


def blocked(db: Session, address: str, hashed: str, now: datetime, limits: LoginLimits) -> Limit | None:
    """The limit this attempt has reached, or None if the password may be checked.

    Workers check and record without a lock: a few guesses in flight at the same moment may
    pass one limit by as many as there are workers, which still keeps guessing slow.
    """
    pair, by_address, by_email = _counts(db, address, hashed, now - limits.window)
    if pair >= limits.per_pair:
        return "pair"
    if by_address >= limits.per_address:
        return "address"
    if by_email >= limits.per_email:
        return "email"
    return None


def refused(limit: Limit) -> None:
    """Count an attempt refused unchecked (audited only when the limit is reached: see
    :func:`audit_blocked`)."""
    _count(f"throttled:{limit}")


def failed(db: Session, address: str, hashed: str, now: datetime, limits: LoginLimits) -> Limit | None:
    """Count one failure (and forget those older than the window). Returns the limit this
    failure has just reached, if any: the moment worth an audit entry of its own."""
    db.execute(delete(LoginAttempt).where(LoginAttempt.at <= now - limits.window))
    db.add(LoginAttempt(at=now, address=address, email_hash=hashed))
    db.flush()
    return blocked(db, address, hashed, now, limits)


def succeeded(db: Session, address: str, hashed: str) -> None:
    """The right password from ``address``: its own failures at this email are forgiven (a typo
    or two), no one else's."""
    db.execute(delete(LoginAttempt).where(LoginAttempt.address == address, LoginAttempt.email_hash == hashed))


# -- the audit log ---------------------------------------------------------------------------------


def _anonymous(address: str) -> str:
    return f"anonymous <{address or 'unknown address'}>"


def audit_success(db: Session, person: Person, address: str, now: datetime) -> None:
    audit.record(db, person, "login.succeeded", f"person:{person.id}", {"address": address}, at=now)


def audit_failure(
    db: Session, email: str, person: Person | None, address: str, hashed: str, reason: str, now: datetime
) -> None:
    """A failed login: the email only when it is a person's (their own audit trail, erased with
    them); for an unknown email only a short keyed hash, to tell repeated tries apart."""
    _count("failed")
    detail: dict[str, str] = {"address": address, "reason": reason}
    if person is not None:
        detail["email"] = email
        subject = f"person:{person.id}"
    else:
        detail["email"] = "unknown account"
        detail["email_hash"] = hashed[:16]
        subject = "login"
    audit.record(db, None, "login.failed", subject, detail, at=now, actor_label=_anonymous(address))


def audit_blocked(db: Session, limit: Limit, address: str, hashed: str, now: datetime) -> None:
    """A limit was reached: once per reaching, not once per refused attempt (a flood of refused
    attempts writes nothing, so it cannot fill the audit log)."""
    log.warning("login limit per %s reached from %s", limit, address)
    audit.record(
        db,
        None,
        "login.throttled",
        "login",
        {"limit": limit, "address": address, "email_hash": hashed[:16]},
        at=now,
        actor_label=_anonymous(address),
    )
