"""Backups of the database and of the secrets a restored server needs, and their restore.

One backup *set* per run, a folder ``werkbank-<UTC time>`` in the backup folder:

* ``database.enc``: the database, as ``pg_dump --format=custom`` writes it (PostgreSQL) or as
  SQLite's online backup API copies it (consistent while the server writes), encrypted;
* ``secrets.enc``: the server's settings (``SECRET_KEY``, the certificate key, ``MQTT_URL`` with the
  bridge's password, SMTP login, …) and the files a restored server needs beside the database
  (the broker's CA, and ``WERKBANK_BACKUP_FILES``: Mosquitto's password file with every Pi's
  login, the broker's key and certificate), encrypted, together with what the set holds;
* ``manifest.json``: plain text for people and scripts (when, which database, which schema, the
  row count of every table, the key id, the encrypted files' SHA-256). Restore reads it only to
  tell a wrong key or a damaged copy apart early; what it trusts is inside ``secrets.enc``.

Both files are encrypted with Fernet (``cryptography``) under a key the admin keeps
(``werkbank backup-key``). The database is encrypted in 1 MiB parts, each a Fernet token (after
its length) whose plaintext starts with the set's random id, the part's number and an "end"
mark, so that a part from another set, a reordered part or a cut-off file is refused, and no
plaintext dump ever lands on disk (PostgreSQL streams through; SQLite's copy is removed at once).
The database is encrypted too, not only the secrets: it holds the sites' card master keys and
the machines' allow-list keys and everybody's personal data, and backups are meant to be copied
off the server.

A run writes into a ``.partial-…`` folder and renames it when complete, so a failed or killed run
never leaves a set that rotation would count or restore would pick; old sets are removed (the
newest N kept) only after a success. ``backup-status.json`` beside the sets says when the last run
succeeded and failed and why; a failure is also written to the audit log and told to every
active admin (app notification, e-mailed at once when SMTP is set up).

Restore only fills an empty database (a PostgreSQL database without tables, a SQLite file that
does not exist or has no tables), checks everything it can before writing anything (key, checksums,
every encrypted part, the target), and writes the secrets into a folder of their own for the admin
to put in place (``RESTORE.txt`` there says where each goes).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import grp
import hashlib
import hmac
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import create_engine, func, inspect, select, table, text
from sqlalchemy.engine import Connection, make_url

from server.db import Database, normalise_url
from server.services import audit, mail, notifications
from server.services.mail import SmtpSettings

log = logging.getLogger(__name__)

FORMAT = 1
SET_PREFIX = "werkbank-"
SET_RE = re.compile(r"^werkbank-(\d{8}T\d{6}Z)(?:-(\d+))?$")
PARTIAL_PREFIX = ".partial-"
STATUS_FILE = "backup-status.json"
MANIFEST = "manifest.json"
SECRETS = "secrets.enc"
DATABASE = "database.enc"
RESTORE_NOTES = "RESTORE.txt"
CHUNK = 1 << 20
_SET_ID_BYTES = 16
_HEADER = _SET_ID_BYTES + 8 + 1  # set id, part number, end mark
# The environment variables that are the server's settings (the README's "Settings"): what
# /etc/werkbank/werkbank.env holds, and what a restored server gets back.
SETTING_NAMES = ("SECRET_KEY", "DATABASE_URL")
SETTING_PREFIXES = ("MQTT_", "WERKBANK_")
# pg_dump waits this long for a table lock (a running migration), then fails instead of hanging.
PG_LOCK_WAIT = "120s"
POSTGRESQL_CLIENT_HINT = (
    "install Debian's postgresql-client (apt-get install postgresql-client; `make postgresql-client` "
    "in a checkout), of the PostgreSQL server's major version or newer"
)


class BackupError(Exception):
    """A backup or restore cannot be done as asked; the message says why and what to do."""


# -- settings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupSettings:
    directory: Path
    key_file: Path
    keep: int
    files: tuple[Path, ...] = ()

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], directory: Path | None = None, keep: int | None = None
    ) -> BackupSettings:
        raw = str(config.get("BACKUP_FILES") or "")
        return cls(
            directory=Path(directory or config["BACKUP_DIR"]),
            key_file=Path(config["BACKUP_KEY_FILE"]),
            keep=int(keep if keep is not None else config["BACKUP_KEEP"]),
            files=tuple(Path(p) for p in raw.split(os.pathsep) if p.strip()),
        )


# -- the key --------------------------------------------------------------------------------------


def key_id(key: bytes) -> str:
    """A name for a key that gives nothing of it away (HMAC of a constant under the key)."""
    return hmac.new(key, b"werkbank backup key id", hashlib.sha256).hexdigest()[:16]


def create_key_file(path: Path) -> str:
    """Write a new key to ``path`` (mode 0600; never over an existing file). Returns its id."""
    if path.exists():
        try:
            existing = f" (key id {key_id(path.read_bytes().strip())})"
        except OSError:
            existing = ""
        raise BackupError(
            f"{path} exists already{existing}: the backups made with it need it. Move it away "
            "first if you really want a new key (and keep the old one for the old backups)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise BackupError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as out:
        out.write(key + b"\n")
    return key_id(key)


def load_key(path: Path) -> tuple[Fernet, str]:
    try:
        raw = path.read_bytes().strip()
    except FileNotFoundError:
        raise BackupError(
            f"no backup key at {path}: make one with `werkbank backup-key` (WERKBANK_BACKUP_KEY_FILE "
            "names where the server finds it)"
        ) from None
    except OSError as exc:
        raise BackupError(f"cannot read the backup key {path}: {exc.strerror}") from exc
    try:
        fernet = Fernet(raw)
    except ValueError:
        raise BackupError(
            f"{path} is not a backup key (one line as `werkbank backup-key` writes it)"
        ) from None
    if path.stat().st_mode & 0o077:
        log.warning("backup key %s can be read by others than its owner: chmod 600 it", path)
    return fernet, key_id(raw)


# -- encrypted streams ----------------------------------------------------------------------------


def _seal(fernet: Fernet, set_id: bytes, source: IO[bytes], out: IO[bytes]) -> tuple[int, int]:
    """Encrypt ``source`` part by part into ``out``; returns (parts, plaintext bytes).

    Each part is a Fernet token stored as raw bytes after its 4-byte length (the token's base64
    would add a third to the size)."""
    index = total = 0
    current = source.read(CHUNK)
    while True:
        following = source.read(CHUNK) if current else b""
        end = not following
        header = set_id + index.to_bytes(8, "big") + (b"\x01" if end else b"\x00")
        token = base64.urlsafe_b64decode(fernet.encrypt(header + current))
        out.write(len(token).to_bytes(4, "big") + token)
        total += len(current)
        index += 1
        if end:
            return index, total
        current = following


def _unseal(fernet: Fernet, set_id: bytes, source: IO[bytes], what: str) -> Iterator[bytes]:
    """The plaintext parts of a sealed stream; BackupError for any part that does not verify."""
    index = 0
    ended = False
    while prefix := source.read(4):
        if ended:
            raise BackupError(f"{what} is damaged: it goes on after its last part")
        size = int.from_bytes(prefix, "big")
        token = source.read(size) if len(prefix) == 4 and size <= 2 * CHUNK else b""
        if len(token) != size or not token:
            raise BackupError(f"{what} is damaged or cut off at part {index + 1}")
        try:
            plain = fernet.decrypt(base64.urlsafe_b64encode(token))
        except InvalidToken:
            raise BackupError(f"{what} is damaged: part {index + 1} does not verify") from None
        if len(plain) < _HEADER or plain[:_SET_ID_BYTES] != set_id:
            raise BackupError(f"{what} does not belong to this backup set (part {index + 1})")
        if int.from_bytes(plain[_SET_ID_BYTES : _SET_ID_BYTES + 8], "big") != index:
            raise BackupError(f"{what} is damaged: its parts are out of order at part {index + 1}")
        ended = plain[_HEADER - 1] == 1
        index += 1
        yield plain[_HEADER:]
    if not ended:
        raise BackupError(f"{what} is cut off after part {index}: copy the backup again")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


# -- databases ------------------------------------------------------------------------------------


def dialect_of(url: str) -> str:
    url = normalise_url(url)
    if url.startswith("postgresql"):
        return "postgresql"
    if url.startswith("sqlite"):
        return "sqlite"
    raise BackupError(f"backups know PostgreSQL and SQLite, not {make_url(url).drivername}")


def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up or restored: use a file")
    return Path(database)


def _pg_conninfo(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URI for the PostgreSQL tools, and their environment: the password goes in
    PGPASSWORD, never on a command line that every user of the host can read."""
    parsed = make_url(normalise_url(url))
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    uri = parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    return uri, env


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} is not installed (not found on PATH): {POSTGRESQL_CLIENT_HINT}")
    return found


def _engine(url: str, **kwargs: Any) -> Any:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        return create_engine(url, **kwargs)
    return create_engine(url, connect_args={"connect_timeout": 10}, **kwargs)


def _counts(conn: Connection) -> dict[str, int]:
    """Rows in every table (the restore checks it gets the same)."""
    names = sorted(inspect(conn).get_table_names())
    count = select(func.count())
    return {name: int(conn.execute(count.select_from(table(name))).scalar_one()) for name in names}


def _revision(conn: Connection) -> str | None:
    if "alembic_version" not in inspect(conn).get_table_names():
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


@dataclass
class _Dumped:
    parts: int
    plain_bytes: int
    counts: dict[str, int]
    revision: str | None


def _dump_postgresql(url: str, out: IO[bytes], fernet: Fernet, set_id: bytes) -> _Dumped:
    pg_dump = _pg_tool("pg_dump")
    uri, env = _pg_conninfo(url)
    engine = _engine(url, isolation_level="REPEATABLE READ")
    try:
        with engine.connect() as conn, tempfile.TemporaryFile() as errors:
            # The counts and pg_dump see the same snapshot, so the restore can check the counts.
            snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            counts, revision = _counts(conn), _revision(conn)
            argv = [
                pg_dump,
                "--format=custom",
                f"--snapshot={snapshot}",
                f"--lock-wait-timeout={PG_LOCK_WAIT}",
                f"--dbname={uri}",
            ]
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, env=env)
            assert proc.stdout is not None
            try:
                parts, plain = _seal(fernet, set_id, proc.stdout, out)
            except BaseException:
                proc.kill()
                raise
            finally:
                proc.stdout.close()
                code = proc.wait()
            if code != 0:
                errors.seek(0)
                why = errors.read().decode("utf-8", "replace").strip().splitlines()
                raise BackupError(f"pg_dump failed (exit {code}): {' '.join(why[-3:]) or 'no message'}")
            conn.rollback()
    finally:
        engine.dispose()
    return _Dumped(parts, plain, counts, revision)


def _sqlite_problem(report: str) -> str:
    """The first two findings of SQLite's integrity check (it may list thousands)."""
    findings = [line for line in report.splitlines() if line.strip() and not line.startswith("***")]
    return "; ".join(findings[:2]) + (f" (and {len(findings) - 2} more)" if len(findings) > 2 else "")


def _dump_sqlite(url: str, out: IO[bytes], fernet: Fernet, set_id: bytes, scratch: Path) -> _Dumped:
    source_path = sqlite_path(url)
    if not source_path.exists():
        raise BackupError(f"the SQLite database {source_path} does not exist")
    copy_path = scratch / "database.sqlite"
    try:
        # One step (pages=-1) under one read transaction: a consistent copy, and in WAL mode the
        # server's writers go on meanwhile.
        source = sqlite3.connect(source_path, timeout=30)
        copy = sqlite3.connect(copy_path)
        try:
            source.backup(copy, pages=-1)
        finally:
            source.close()
        try:
            problem = copy.execute("PRAGMA quick_check").fetchone()[0]
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            copy.close()
        if problem != "ok":
            raise BackupError(f"the SQLite database {source_path} is damaged: {_sqlite_problem(problem)}")
        engine = create_engine(f"sqlite:///{copy_path}")
        try:
            with engine.connect() as conn:
                counts, revision = _counts(conn), _revision(conn)
        finally:
            engine.dispose()
        with copy_path.open("rb") as plain:
            parts, size = _seal(fernet, set_id, plain, out)
    except sqlite3.DatabaseError as exc:
        # SQLite may find the damage while copying, before the check of the copy runs.
        damaged = any(word in str(exc) for word in ("malformed", "not a database", "corrupt"))
        what = "is damaged" if damaged else "cannot be copied"
        raise BackupError(f"the SQLite database {source_path} {what}: {exc}") from exc
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy the SQLite database {source_path}: {exc}") from exc
    finally:
        copy_path.unlink(missing_ok=True)
    return _Dumped(parts, size, counts, revision)


# -- what else a restored server needs ------------------------------------------------------------


def _settings_of(config: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    values = {
        name: value
        for name, value in environ.items()
        if name in SETTING_NAMES or name.startswith(SETTING_PREFIXES)
    }
    # The keys the server really uses, whatever the environment says.
    values["SECRET_KEY"] = str(config["SECRET_KEY"])
    if config.get("CERTIFICATE_KEY"):
        values["WERKBANK_CERTIFICATE_KEY"] = str(config["CERTIFICATE_KEY"])
    return dict(sorted(values.items()))


def _file_entry(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise BackupError(f"{path} (WERKBANK_BACKUP_FILES) is a folder: name the files in it")
    try:
        content = path.read_bytes()
        st = path.stat()
    except FileNotFoundError:
        raise BackupError(
            f"{path} is missing: WERKBANK_BACKUP_FILES or MQTT_CA_FILE names it, so a restore would need it"
        ) from None
    except OSError as exc:
        raise BackupError(
            f"cannot read {path}: {exc.strerror} (the backup unit reads Mosquitto's files as group "
            "mosquitto; see docs/deploy.md, Backups)"
        ) from exc

    def owner(lookup: Callable[[int], Any], uid: int) -> str:
        try:
            return str(lookup(uid)[0])
        except KeyError:
            return str(uid)

    return {
        "path": str(path.resolve()),
        "mode": st.st_mode & 0o7777,
        "owner": owner(pwd.getpwuid, st.st_uid),
        "group": owner(grp.getgrgid, st.st_gid),
        "content": base64.b64encode(content).decode(),
    }


def _files_of(config: Mapping[str, Any], settings: BackupSettings) -> list[dict[str, Any]]:
    paths: list[Path] = []
    if config.get("MQTT_CA_FILE"):  # provisioning copies it into every new Pi's bundle
        paths.append(Path(config["MQTT_CA_FILE"]))
    paths += settings.files
    seen: set[Path] = set()
    entries = []
    for path in paths:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            entries.append(_file_entry(path))
    return entries


# -- one backup -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupResult:
    path: Path
    bytes: int
    seconds: float
    counts: dict[str, int]
    removed: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with (directory / ".lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(f"another backup is running in {directory}") from None
        yield


def _set_name(directory: Path, now: datetime) -> str:
    """``werkbank-<UTC second>``, with ``-2``, ``-3`` … after the highest number that second has had
    (not after a gap: rotation may have removed ``-1`` already, and the new set must sort last)."""
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    taken = [
        int(match.group(2) or 1)
        for p in directory.iterdir()
        if (match := SET_RE.match(p.name)) and match.group(1) == stamp
    ]
    return f"{SET_PREFIX}{stamp}" + (f"-{max(taken) + 1}" if taken else "")


def _set_order(path: Path) -> tuple[str, int]:
    match = SET_RE.match(path.name)
    assert match is not None
    return match.group(1), int(match.group(2) or 1)


def backup_sets(directory: Path) -> list[Path]:
    """The complete sets in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [
        p for p in directory.iterdir() if p.is_dir() and SET_RE.match(p.name) and (p / MANIFEST).is_file()
    ]
    return sorted(found, key=_set_order)


def rotate(directory: Path, keep: int, made: str | None = None) -> list[str]:
    """Remove all but the newest ``keep`` sets, and leftovers of killed runs. The set just ``made``
    stays whatever its name (a clock set back would make it sort older). Returns the names removed."""
    if keep < 1:
        raise BackupError("keep at least one backup (--keep 1 or more)")
    for leftover in directory.glob(PARTIAL_PREFIX + "*"):
        shutil.rmtree(leftover, ignore_errors=True)
    others = [p for p in backup_sets(directory) if p.name != made]
    removed = []
    for old in others[: max(0, len(others) - (keep - 1 if made else keep))]:
        shutil.rmtree(old)
        removed.append(old.name)
    return removed


def create_backup(
    url: str,
    settings: BackupSettings,
    config: Mapping[str, Any],
    now: datetime,
    environ: Mapping[str, str] | None = None,
) -> BackupResult:
    """Write one backup set into ``settings.directory`` and rotate; BackupError says what failed."""
    begun = time.monotonic()
    dialect = dialect_of(url)
    if settings.keep < 1:
        raise BackupError("keep at least one backup (--keep 1 or more)")
    if dialect == "postgresql":
        _pg_tool("pg_dump")  # before anything else: say what to install
    fernet, kid = load_key(settings.key_file)
    files = _files_of(config, settings)
    directory = settings.directory
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create the backup folder {directory}: {exc.strerror}") from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise BackupError(f"cannot write into the backup folder {directory}: permission denied")
    with _locked(directory):
        name = _set_name(directory, now)
        partial = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=directory))
        try:
            set_id = secrets.token_bytes(_SET_ID_BYTES)
            with (partial / DATABASE).open("wb") as out:
                if dialect == "postgresql":
                    dumped = _dump_postgresql(url, out, fernet, set_id)
                else:
                    dumped = _dump_sqlite(url, out, fernet, set_id, partial)
                out.flush()
                os.fsync(out.fileno())
            payload = {
                "format": FORMAT,
                "set_id": set_id.hex(),
                "created": now.isoformat(),
                "database": dialect,
                "schema_revision": dumped.revision,
                "counts": dumped.counts,
                "database_parts": dumped.parts,
                "settings": _settings_of(config, environ if environ is not None else os.environ),
                "files": files,
            }
            sealed = fernet.encrypt(json.dumps(payload).encode())
            (partial / SECRETS).write_bytes(sealed + b"\n")
            manifest = {
                "format": FORMAT,
                "created": now.isoformat(),
                "host": socket.gethostname(),
                "werkbank": _version(),
                "database": dialect,
                "schema_revision": dumped.revision,
                "counts": dumped.counts,
                "key_id": kid,
                "files": {
                    part: {"bytes": (partial / part).stat().st_size, "sha256": _sha256(partial / part)}
                    for part in (DATABASE, SECRETS)
                },
                "secret_files": [entry["path"] for entry in files],
            }
            (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            for written in partial.iterdir():
                written.chmod(0o600)
            partial.rename(directory / name)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        removed = rotate(directory, settings.keep, made=name)
    size = sum(p.stat().st_size for p in (directory / name).iterdir())
    return BackupResult(directory / name, size, time.monotonic() - begun, dumped.counts, removed)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("werkbank")
    except PackageNotFoundError:
        return "unknown"


# -- the status file ------------------------------------------------------------------------------


def read_status(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_status(directory: Path, at: datetime, ok: bool, message: str, result: BackupResult | None) -> None:
    """Record this run in ``backup-status.json`` (the last success stays when a run fails)."""
    status = read_status(directory)
    run = {"at": at.isoformat(), "ok": ok, "message": message}
    status["last_run"] = run
    if ok and result is not None:
        status["last_success"] = run | {
            "set": result.path.name,
            "bytes": result.bytes,
            "seconds": round(result.seconds, 3),
        }
    else:
        status["last_failure"] = run
    status.setdefault("last_success", None)
    status.setdefault("last_failure", None)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".status-", dir=directory)
    with os.fdopen(fd, "w") as out:
        json.dump(status, out, indent=2)
        out.write("\n")
    os.chmod(tmp, 0o644)  # monitoring may read it; it holds no secret
    os.replace(tmp, directory / STATUS_FILE)


# -- restore --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreResult:
    name: str
    created: str
    dialect: str
    revision: str | None
    counts: dict[str, int]
    secrets_dir: Path


def _read_manifest(set_dir: Path) -> dict[str, Any]:
    if set_dir.is_file() and set_dir.name == MANIFEST:
        set_dir = set_dir.parent
    path = set_dir / MANIFEST
    if not set_dir.is_dir():
        raise BackupError(f"{set_dir} is not a backup set (a folder werkbank-<time> with {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackupError(f"{set_dir} is not a backup set: it has no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path} is damaged: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: not a backup of this Werkbank version's format ({FORMAT})")
    return manifest


def _check_target_empty(url: str, dialect: str) -> None:
    """BackupError unless the database at ``url`` has no tables; reads only."""
    if dialect == "sqlite":
        path = sqlite_path(url)
        if not path.exists() or path.stat().st_size == 0:
            return
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise BackupError(f"cannot read {path}: {exc}: restore into a new file") from exc
    else:
        engine = _engine(url)
        try:
            with engine.connect() as conn:
                tables = list(
                    conn.execute(
                        text(
                            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
                            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
                        )
                    ).scalars()
                )
        except Exception as exc:
            raise BackupError(
                f"cannot connect to the database to restore into ({_safe(url)}): {_first_line(exc)}. "
                "Create it empty first (createdb -O werkbank werkbank)"
            ) from exc
        finally:
            engine.dispose()
    if tables:
        people = ""
        engine = _engine(url)
        with contextlib.suppress(Exception), engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(table("people"))).scalar_one()
            people = f", {count} people"
        engine.dispose()
        raise BackupError(
            f"the database {_safe(url)} is not empty ({len(tables)} tables{people}): restore only into "
            "an empty database (a new PostgreSQL database from createdb, or a SQLite file that does not "
            "exist yet; do not run `werkbank db upgrade` before the restore). Nothing was changed"
        )


def _safe(url: str) -> str:
    return make_url(normalise_url(url)).render_as_string(hide_password=True)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _write_secrets(payload: Mapping[str, Any], into: Path, name: str) -> None:
    """The settings as werkbank.env and each file under files/<its path>, plus RESTORE.txt."""
    into.mkdir(mode=0o700, parents=True)
    settings = payload.get("settings") or {}
    (into / "werkbank.env").write_text(
        f"# The settings of the server backed up in {name}. Check DATABASE_URL (the new database) and\n"
        "# the addresses before you install this as /etc/werkbank/werkbank.env.\n"
        + "".join(f"{key}={value}\n" for key, value in settings.items())
    )
    os.chmod(into / "werkbank.env", 0o600)
    lines = [
        f"Restored from {name}. Put these in place (as root), then start the services:",
        "",
        "install -m 640 -o root -g werkbank werkbank.env /etc/werkbank/werkbank.env",
    ]
    for entry in payload.get("files") or []:
        original = Path(entry["path"])
        local = into / "files" / original.relative_to(original.anchor)
        local.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        local.write_bytes(base64.b64decode(entry["content"]))
        os.chmod(local, 0o600)
        lines.append(
            f"install -D -m {entry['mode']:04o} -o {entry['owner']} -g {entry['group']} "
            f"{local.relative_to(into)} {original}"
        )
    (into / RESTORE_NOTES).write_text("\n".join(lines) + "\n")


def _pg_restore(url: str, chunks: Iterator[bytes]) -> None:
    pg_restore = _pg_tool("pg_restore")
    uri, env = _pg_conninfo(url)
    argv = [
        pg_restore,
        # All or nothing: one transaction, stopped at the first error.
        "--single-transaction",
        "--exit-on-error",
        # The new server's database user owns everything, whatever the old one was called.
        "--no-owner",
        "--no-privileges",
        f"--dbname={uri}",
    ]
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors, env=env
        )
        assert proc.stdin is not None
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # pg_restore stopped early; its exit code and message say why
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        code = proc.wait()
        if code != 0:
            errors.seek(0)
            why = errors.read().decode("utf-8", "replace").strip().splitlines()
            raise BackupError(
                f"pg_restore failed (exit {code}), nothing was restored: {' '.join(why[-3:]) or 'no message'}"
            )


def _sqlite_restore(path: Path, copy: Path) -> None:
    source = sqlite3.connect(copy)
    target = sqlite3.connect(path)
    try:
        source.backup(target, pages=-1)
    finally:
        source.close()
        target.close()


def _verify_sqlite_copy(copy: Path, counts: Mapping[str, int]) -> None:
    try:
        check = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
        try:
            problem = check.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            check.close()
    except sqlite3.Error as exc:
        raise BackupError(f"the database in the backup cannot be read: {exc}") from exc
    if problem != "ok":
        raise BackupError(f"the database in the backup is damaged: {_sqlite_problem(problem)}")
    engine = create_engine(f"sqlite:///{copy}")
    try:
        with engine.connect() as conn:
            found = _counts(conn)
    finally:
        engine.dispose()
    if found != dict(counts):
        raise BackupError("the database in the backup does not hold the rows its manifest lists: damaged")


def restore_backup(set_dir: Path, key_file: Path, url: str, secrets_to: Path | None = None) -> RestoreResult:
    """Restore the set ``set_dir`` into the empty database at ``url``; the secrets go to ``secrets_to``
    (default ``./werkbank-restore-<set>``). Checks everything before it writes anything."""
    manifest = _read_manifest(set_dir)
    if set_dir.name == MANIFEST:
        set_dir = set_dir.parent
    fernet, kid = load_key(key_file)
    if manifest.get("key_id") != kid:
        raise BackupError(
            f"wrong key: {set_dir.name} was made with key {manifest.get('key_id')}, {key_file} is key {kid}. "
            "Nothing was changed"
        )
    for part in (SECRETS, DATABASE):
        path = set_dir / part
        if not path.is_file():
            raise BackupError(f"{set_dir.name} is incomplete: {part} is missing. Nothing was changed")
        expected = (manifest.get("files") or {}).get(part, {}).get("sha256")
        if expected != _sha256(path):
            raise BackupError(
                f"{set_dir.name}/{part} is damaged (its SHA-256 differs from the manifest's): use another "
                "copy or an older backup. Nothing was changed"
            )
    try:
        payload = json.loads(fernet.decrypt((set_dir / SECRETS).read_bytes().strip()))
    except InvalidToken:
        raise BackupError(f"{set_dir.name}/{SECRETS} does not verify with this key: damaged") from None
    set_id = bytes.fromhex(payload["set_id"])
    dialect = dialect_of(url)
    if payload["database"] != dialect:
        raise BackupError(
            f"{set_dir.name} holds a {payload['database']} database, but the target is {dialect}: restore "
            "into the same kind of database. Nothing was changed"
        )
    if dialect == "postgresql":
        _pg_tool("pg_restore")
    secrets_to = secrets_to or Path.cwd() / f"werkbank-restore-{set_dir.name.removeprefix(SET_PREFIX)}"
    if secrets_to.exists():
        raise BackupError(f"{secrets_to} exists already: name another folder for the secrets (--secrets-to)")
    _check_target_empty(url, dialect)
    counts = payload["counts"]
    what = f"{set_dir.name}/{DATABASE}"
    if dialect == "sqlite":
        target = sqlite_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".werkbank-restore-", dir=target.parent) as scratch:
            copy = Path(scratch) / "database.sqlite"
            with (set_dir / DATABASE).open("rb") as sealed, copy.open("wb") as plain:
                for chunk in _unseal(fernet, set_id, sealed, what):
                    plain.write(chunk)
            _verify_sqlite_copy(copy, counts)
            _check_target_empty(url, dialect)  # still empty now that the copy is checked
            _write_secrets(payload, secrets_to, set_dir.name)
            _sqlite_restore(target, copy)
    else:
        # Every part is verified before pg_restore sees the first: a damaged file changes nothing.
        with (set_dir / DATABASE).open("rb") as sealed:
            for _chunk in _unseal(fernet, set_id, sealed, what):
                pass
        _write_secrets(payload, secrets_to, set_dir.name)
        try:
            with (set_dir / DATABASE).open("rb") as sealed:
                _pg_restore(url, _unseal(fernet, set_id, sealed, what))
        except BaseException:
            shutil.rmtree(secrets_to, ignore_errors=True)
            raise
        engine = _engine(url)
        try:
            with engine.connect() as conn:
                found = _counts(conn)
        finally:
            engine.dispose()
        if found != counts:
            differ = sorted(t for t in set(found) | set(counts) if found.get(t) != counts.get(t))
            raise BackupError(
                "the restored database does not hold the rows the backup lists (tables "
                f"{', '.join(differ)}); drop it and try again, or restore an older backup"
            )
    return RestoreResult(
        name=set_dir.name,
        created=str(payload["created"]),
        dialect=dialect,
        revision=payload.get("schema_revision"),
        counts=counts,
        secrets_dir=secrets_to,
    )


# -- making a run visible -------------------------------------------------------------------------


def record_success(database: Database, result: BackupResult, at: datetime, actor_label: str) -> None:
    """The status file and the audit log; trouble here is logged (the backup itself is good)."""
    message = f"{result.path.name}: {result.bytes} bytes in {result.seconds:.1f} s"
    try:
        write_status(result.path.parent, at, True, message, result)
    except OSError as exc:
        log.warning("backup %s made, but %s not written: %s", result.path.name, STATUS_FILE, exc)
    detail = {
        "directory": str(result.path.parent),
        "bytes": result.bytes,
        "seconds": round(result.seconds, 3),
        "removed": result.removed,
    }
    try:
        with database.session() as db:
            audit.record(db, None, "backup.created", result.path.name, detail, at=at, actor_label=actor_label)
    except Exception as exc:
        log.warning("backup %s made, not written to the audit log: %s", result.path.name, _first_line(exc))


def record_failure(
    database: Database,
    config: Mapping[str, Any],
    directory: Path,
    at: datetime,
    message: str,
    actor_label: str,
) -> list[str]:
    """Make a failed run visible: the status file, the audit log, a notice to every active admin
    (e-mailed at once when SMTP is set up). Returns what of that could not be done."""
    problems = []
    try:
        write_status(directory, at, False, message, None)
    except OSError as exc:
        problems.append(f"{directory / STATUS_FILE} not written: {exc}")
    try:
        with database.session() as db:
            audit.record(
                db,
                None,
                "backup.failed",
                "backup",
                {"error": message, "directory": str(directory)},
                at=at,
                actor_label=actor_label,
            )
            told = notifications.backup_failed(db, at, message, str(config["BABEL_DEFAULT_TIMEZONE"]))
    except Exception as exc:
        problems.append(f"not written to the database (audit log, admins' notices): {_first_line(exc)}")
        return problems
    if not told:
        problems.append("no active admin to tell")
    smtp = SmtpSettings.from_config(config)
    if smtp is not None:
        # Now, not at the scheduler's next e-mail run: the scheduler may be what is broken.
        mail.send_pending(database, smtp, at)
    return problems
