"""The lab's own keys, made on first use and kept in the database (``lab_keys``):

* the **certificate signing key** (Ed25519): certificates are signed with it, and its public
  half is published (``/v/keys.json``, the verification site's *Public key* page), so anyone can
  check a certificate without asking the server;
* the **pseudonym key** (HMAC-SHA256, 32 random bytes): the pseudonyms in exports are keyed with
  it, so nobody can recompute them from a list of person numbers or names.

Why the database and not a file beside ``SECRET_KEY``: every process (the web workers, the
scheduler, the CLI; in the compose set-up, containers without a shared disk) must use the same
keys from the first one on, and ``werkbank backup`` keeps the database (encrypted) anyway, as it
keeps the sites' badge master keys. Whoever can read the database can therefore sign
certificates and recompute pseudonyms (docs/security.md).

A key is made inside the caller's transaction (a savepoint, so two processes making it at once
end up with one: the second insert fails on the primary key and reads the first); the caller
commits it with its own work. A caller that would otherwise not commit (a report shown, not
exported) calls :func:`ensure` and commits.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.models import LabKey, utcnow

CERTIFICATE = "certificate-ed25519"
PSEUDONYM = "pseudonym-hmac"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _get_or_make(db: Session, name: str, make: Callable[[], tuple[str, str | None]]) -> LabKey:
    row = db.get(LabKey, name)
    if row is not None:
        return row
    secret, public = make()
    try:
        with db.begin_nested():
            db.add(LabKey(name=name, secret=secret, public=public, created_at=utcnow()))
    except IntegrityError:  # another process made it first: theirs counts
        pass
    row = db.scalar(select(LabKey).where(LabKey.name == name).execution_options(populate_existing=True))
    assert row is not None
    return row


def _new_signing_key() -> tuple[str, str]:
    private = Ed25519PrivateKey.generate()
    return _b64(private.private_bytes_raw()), _b64(private.public_key().public_bytes_raw())


def key_id(public_raw: bytes) -> str:
    """A public key's short name (16 hex digits of its SHA-256), as certificates cite it."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    key_id: str
    raw: bytes  # the 32 bytes
    created_at: datetime
    current: bool

    @property
    def key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.raw)

    @property
    def pem(self) -> str:
        return self.key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()

    @property
    def base64(self) -> str:
        return _b64(self.raw)


def signing_key(db: Session) -> tuple[str, Ed25519PrivateKey]:
    """The lab's certificate signing key (made on first use) and its key id."""
    row = _get_or_make(db, CERTIFICATE, _new_signing_key)
    assert row.public is not None
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(row.secret))
    return key_id(base64.b64decode(row.public)), private


def public_keys(db: Session) -> list[PublicKey]:
    """Every certificate signing key's public half the lab has had (one today; a key renamed
    to ``certificate-ed25519-<date>`` to retire it still verifies the certificates it signed)."""
    rows = db.scalars(
        select(LabKey)
        .where(LabKey.name.startswith(CERTIFICATE), LabKey.public.is_not(None))
        .order_by(LabKey.created_at)
    )
    out = []
    for row in rows:
        assert row.public is not None
        raw = base64.b64decode(row.public)
        out.append(PublicKey(key_id(raw), raw, row.created_at, row.name == CERTIFICATE))
    return out


def pseudonym_key(db: Session) -> bytes:
    """The key pseudonyms are made with (32 random bytes, made on first use)."""
    row = _get_or_make(db, PSEUDONYM, lambda: (_b64(secrets.token_bytes(32)), None))
    return base64.b64decode(row.secret)


def has_pseudonym_key(db: Session) -> bool:
    return db.get(LabKey, PSEUDONYM) is not None


def ensure(db: Session) -> None:
    """Make both keys now if they are not there yet (the caller commits)."""
    signing_key(db)
    pseudonym_key(db)
