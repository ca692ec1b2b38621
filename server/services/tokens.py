"""API tokens: create (shown once), check a presented token, revoke, list.

A token is ``wb_`` and 48 hex characters (192 random bits). Only its SHA-256 is stored, so a
stolen database does not yield working tokens; its first 12 characters (the *prefix*) are
kept in clear to tell tokens apart in ``werkbank token list`` and to revoke one. A token
acts as its person: whatever that person may read or change, the token may.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.models import ApiToken, Person
from server.services import audit

TOKEN_PREFIX = "wb_"  # noqa: S105 - a marker that makes leaked tokens easy to grep for, not a secret
PREFIX_LENGTH = 12
# last_used_at is written at most this often per token: a reporting script polling every
# second should not turn every read into a write.
LAST_USED_EVERY = timedelta(minutes=1)


class TokenError(ValueError):
    """A presented token is refused, or a token command cannot be carried out.

    ``code`` is machine-readable: ``invalid_token``, ``token_expired``, ``token_revoked``,
    ``person_inactive``, ``unknown_person``, ``unknown_prefix``, ``ambiguous_prefix``.
    """

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create(
    db: Session,
    email: str,
    name: str,
    now: datetime,
    *,
    expires_days: int | None = None,
    actor_label: str = "cli",
) -> tuple[ApiToken, str]:
    """Make a token for the person with ``email``; returns the row and the token (shown once)."""
    person = db.scalar(select(Person).where(func.lower(Person.email) == email.strip().lower()))
    if person is None:
        raise TokenError("unknown_person", f"no person with email {email}")
    # The actor is whoever ran the command (the CLI has no login), not the token's person.
    return create_for(db, person, name, now, expires_days=expires_days, actor_label=actor_label)


def create_for(
    db: Session,
    person: Person,
    name: str,
    now: datetime,
    *,
    expires_days: int | None = None,
    actor: Person | None = None,
    actor_label: str | None = None,
) -> tuple[ApiToken, str]:
    """Make a token for ``person``; returns the row and the token (shown once, never stored)."""
    if not person.active:
        raise TokenError("person_inactive", f"{person.name} is not active")
    if expires_days is not None and expires_days < 1:
        raise TokenError("invalid_expiry", "--expires-days must be 1 or more")
    secret = TOKEN_PREFIX + secrets.token_hex(24)
    token = ApiToken(
        person_id=person.id,
        name=name,
        token_hash=hash_token(secret),
        prefix=secret[:PREFIX_LENGTH],
        created_at=now,
        expires_at=now + timedelta(days=expires_days) if expires_days is not None else None,
    )
    db.add(token)
    db.flush()
    audit.record(
        db,
        actor,
        "token.created",
        f"person:{person.id}",
        {"token": token.prefix, "name": name, "expires_at": _iso(token.expires_at)},
        at=now,
        actor_label=actor_label,
    )
    return token, secret


def authenticate(db: Session, secret: str, now: datetime) -> ApiToken:
    """The token row behind ``secret`` if it may be used now; else :class:`TokenError`.

    Touches ``last_used_at`` when it is older than :data:`LAST_USED_EVERY` (the caller commits).
    """
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        raise TokenError("invalid_token", "The token is not valid.")
    token = db.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))
    if token is None:
        raise TokenError("invalid_token", "The token is not valid.")
    if token.revoked_at is not None:
        raise TokenError("token_revoked", "The token has been revoked.")
    if token.expires_at is not None and token.expires_at <= now:
        raise TokenError("token_expired", "The token has expired.")
    if not token.person.active:
        raise TokenError("person_inactive", "The token's person is not active.")
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_EVERY:
        token.last_used_at = now
    return token


def revoke(db: Session, prefix: str, now: datetime, *, actor_label: str = "cli") -> ApiToken:
    """Revoke the one unrevoked token whose prefix starts with ``prefix``."""
    prefix = prefix.strip()
    if len(prefix) < len(TOKEN_PREFIX) + 4:
        raise TokenError(
            "ambiguous_prefix", f"give at least {len(TOKEN_PREFIX) + 4} characters of the prefix"
        )
    found = db.scalars(
        select(ApiToken).where(ApiToken.prefix.startswith(prefix[:PREFIX_LENGTH], autoescape=True))
    ).all()
    live = [t for t in found if t.revoked_at is None]
    if not live:
        raise TokenError("unknown_prefix", f"no active token with prefix {prefix}")
    if len(live) > 1:
        raise TokenError("ambiguous_prefix", f"{len(live)} tokens start with {prefix}: give more characters")
    token = live[0]
    revoke_token(db, token, now, None, actor_label=actor_label)
    db.flush()
    return token


def revoke_token(
    db: Session, token: ApiToken, now: datetime, actor: Person | None, *, actor_label: str | None = None
) -> bool:
    """Revoke one token (the admin page's button, the CLI); False when it was revoked already."""
    if token.revoked_at is not None:
        return False
    token.revoked_at = now
    audit.record(
        db,
        actor,
        "token.revoked",
        f"person:{token.person_id}",
        {"token": token.prefix, "name": token.name},
        at=now,
        actor_label=actor_label,
    )
    return True


def listing(db: Session, *, include_revoked: bool = False) -> Sequence[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.id)
    if not include_revoked:
        query = query.where(ApiToken.revoked_at.is_(None))
    return db.scalars(query).all()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
