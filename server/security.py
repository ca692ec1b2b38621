"""Password hashing for people's web logins and devices' broker passwords (argon2id).

One hasher for the whole server, so the web login, the lab file (``werkbank load``) and
device provisioning all write hashes with the same parameters.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from functools import cache

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

# OWASP Password Storage Cheat Sheet, first recommended argon2id setting: 19 MiB of memory,
# 2 iterations, 1 degree of parallelism. Enough against GPU guessing, yet a login costs only
# a few tens of milliseconds on a small lab PC or a Raspberry Pi-class server.
_HASHER = PasswordHasher(
    time_cost=2,
    memory_cost=19 * 1024,  # KiB
    parallelism=1,
    hash_len=32,
    salt_len=16,
    type=Type.ID,
)


@dataclass(frozen=True)
class PasswordCheck:
    """The outcome of :func:`verify_password`.

    ``new_hash`` is set when the password was right but the stored hash used older
    parameters: the caller stores it, so hashes follow the settings above over time.
    """

    ok: bool
    new_hash: str | None = None


def hash_password(password: str) -> str:
    """An argon2id hash (PHC string, salt included) for storing in ``password_hash``."""
    return _HASHER.hash(password)


def verify_password(stored_hash: str | None, password: str) -> PasswordCheck:
    """Whether ``password`` matches ``stored_hash``; a missing or broken hash never matches."""
    if not stored_hash:
        # Spend the same time as a real check, so response times do not tell an attacker
        # which emails have an account with a password.
        _verify(_dummy_hash(), password)
        return PasswordCheck(ok=False)
    if not _verify(stored_hash, password):
        return PasswordCheck(ok=False)
    if _HASHER.check_needs_rehash(stored_hash):
        return PasswordCheck(ok=True, new_hash=hash_password(password))
    return PasswordCheck(ok=True)


def _verify(stored_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        # VerifyMismatchError is a VerificationError; InvalidHashError covers hashes that are
        # not argon2 at all (e.g. a value typed into the database by hand).
        return False


@cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))
