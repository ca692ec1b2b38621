"""`werkbank backup`, `werkbank restore` and `werkbank backup-key`, on real databases.

A database filled with the demo history (people, badges, sessions, jobs, bookings,
qualifications) and audit entries is backed up through the CLI and restored into a new, empty
database: every row of every table comes back. SQLite always; PostgreSQL too when
TEST_DATABASE_URL names a server (each test makes its own scratch databases on it, with the real
pg_dump and pg_restore). The e-mail of a failed backup goes to a real SMTP server (aiosmtpd).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from server import create_app
from server.adapters.backup import DATABASE, MANIFEST, SECRETS, STATUS_FILE
from server.adapters.demo.history import ADMIN_EMAIL, generate
from server.config import TestConfig
from server.db import Database, make_engine, normalise_url
from server.migrate import upgrade
from server.models import AuditLog, Base, Notification, Person
from server.services import audit, lab_keys, notifications
from server.services.mail import SmtpSettings
from tests.server.test_notifications import Inbox, smtp_server  # noqa: F401 - a fixture

SERVER_URL = os.environ.get("TEST_DATABASE_URL", "")
BACKENDS = ["sqlite", *(["postgresql"] if SERVER_URL.startswith("postgres") else [])]
BRIDGE_URL = "mqtt://werkbank-bridge:bridge-secret-pw@127.0.0.1:1883"


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _server() -> Any:
    return create_engine(make_url(normalise_url(SERVER_URL)), isolation_level="AUTOCOMMIT")


def _scratch_name() -> str:
    return f"wb_backup_{os.getpid()}_{secrets.token_hex(3)}"


@dataclass
class Scratch:
    names: list[str]
    empty: str | None = None


@pytest.fixture(scope="module")
def scratch(backend: str) -> Iterator[Scratch]:
    """The PostgreSQL databases this module made: dropped together at its end (each DROP
    DATABASE makes PostgreSQL write a checkpoint, seconds on a busy server)."""
    made = Scratch([])
    yield made
    if made.names:
        server = _server()
        with server.connect() as conn:
            for name in made.names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


def _create(scratch: list[str], template: str | None = None) -> str:
    name = _scratch_name()
    server = _server()
    try:
        with server.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    finally:
        server.dispose()
    scratch.append(name)
    return make_url(normalise_url(SERVER_URL)).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def filled_template(backend: str, scratch: Scratch, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database filled once per module (:func:`fill`); tests get copies of it."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('template') / 'filled.sqlite'}"
    else:
        url = _create(scratch.names)
    fill(url)
    return url


@pytest.fixture
def new_database(
    backend: str, filled_template: str, scratch: Scratch, tmp_path: Path
) -> Iterator[Callable[..., str]]:
    """Makes databases of this test's own: empty, or (``filled=True``) a copy of the filled
    template. New SQLite files, or new PostgreSQL databases on the TEST_DATABASE_URL server."""
    files: list[Path] = []

    def new(filled: bool = False) -> str:
        if backend == "postgresql":
            return _create(scratch.names, make_url(filled_template).database if filled else None)
        path = tmp_path / f"database-{len(files)}.sqlite"
        files.append(path)
        if filled:
            shutil.copy(filled_template.removeprefix("sqlite:///"), path)
        return f"sqlite:///{path}"

    yield new
    from server.extensions import db

    db.dispose()


@dataclass
class Kit:
    """The backup folder, the key and the settings the server runs with."""

    root: Path
    backups: Path
    key: Path
    passwd: Path
    ca: Path

    def config(self, **more: Any) -> dict[str, Any]:
        return {
            "BACKUP_DIR": str(self.backups),
            "BACKUP_KEY_FILE": str(self.key),
            "BACKUP_FILES": str(self.passwd),
            "MQTT_CA_FILE": str(self.ca),
            "CERTIFICATE_KEY": "certificate-key-1234",
            **more,
        }

    def sets(self) -> list[Path]:
        return sorted(p for p in self.backups.glob("werkbank-*") if p.is_dir())

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.backups / STATUS_FILE).read_text())
        return result


def run(url: str, *args: str, **config: Any) -> Result:
    """The `werkbank` command as an admin types it, on the server whose database is ``url``."""
    from server.extensions import db

    app = create_app(TestConfig, DATABASE_URL=url, **config)
    try:
        return app.test_cli_runner().invoke(args=list(args))
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def module_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("key") / "backup.key"
    result = run("sqlite://", "backup-key", "--out", str(key))
    assert result.exit_code == 0, result.output
    return key


@pytest.fixture
def kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module_key: Path) -> Kit:
    etc = tmp_path / "etc"
    (etc / "mosquitto").mkdir(parents=True)
    passwd = etc / "mosquitto" / "werkbank.passwd"
    passwd.write_text("werkbank-bridge:$7$101$c2FsdA==$aGFzaA==\npi-laser-1:$7$101$c2FsdDI=$aGFzaDI=\n")
    passwd.chmod(0o640)
    ca = etc / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n")
    kit = Kit(tmp_path, tmp_path / "backups", etc / "backup.key", passwd, ca)
    shutil.copy(module_key, kit.key)  # the admin's key, the same in every test of the module
    # The server's settings from its environment file, as systemd's EnvironmentFile sets them.
    monkeypatch.setenv("MQTT_URL", BRIDGE_URL)
    monkeypatch.setenv("WERKBANK_TIMEZONE", "Europe/Berlin")
    return kit


def fill(url: str) -> None:
    """The demo history (one site, three machines, five weeks) plus audit entries."""
    upgrade(url)
    engine = make_engine(url)
    try:
        generate(engine, 1, 3, 0.1, 11, datetime.now(UTC))
    finally:
        engine.dispose()
    database = Database()
    database.init(url)
    with database.session() as s:
        admin = s.scalar(select(Person).where(Person.email == ADMIN_EMAIL))
        assert admin is not None
        admin.language = "de"
        someone = s.scalar(select(Person).where(Person.is_admin.is_(False)).order_by(Person.id))
        assert someone is not None
        audit.record(s, admin, "qualification.grant", f"person {someone.id}", {"level": "briefed"})
        audit.record(s, None, "badge.block", f"person {someone.id}", {"reason": "lost"})
        lab_keys.ensure(s)  # the certificate signing key and the pseudonym key
    database.dispose()


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in primary-key order (the restore's own audit entry left out)."""
    engine = make_engine(url)
    out: dict[str, list[tuple[Any, ...]]] = {}
    try:
        with engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                query = select(table).order_by(*table.primary_key.columns)
                if table.name == "audit_log":
                    query = query.where(table.c.action != "backup.restored")
                out[table.name] = [tuple(row) for row in conn.execute(query)]
            out["alembic_version"] = [
                tuple(r) for r in conn.execute(text("SELECT version_num FROM alembic_version"))
            ]
    finally:
        engine.dispose()
    return out


def tables_of(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if url.startswith("sqlite"):
                return int(
                    conn.execute(text("SELECT count(*) FROM sqlite_master WHERE type = 'table'")).scalar_one()
                )
            return int(
                conn.execute(
                    text("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
                ).scalar_one()
            )
    finally:
        engine.dispose()


def untouched(url: str) -> bool:
    """An empty target is still empty: a missing SQLite file, or a database without tables."""
    if url.startswith("sqlite"):
        return not Path(url.removeprefix("sqlite:///")).exists()
    return tables_of(url) == 0


# -- a backup and its restore -----------------------------------------------------------------------


def test_backup_restores_into_an_empty_database_with_every_row(
    backend: str, new_database: Callable[..., str], kit: Kit, tmp_path: Path
) -> None:
    source = new_database(filled=True)
    before = snapshot(source)
    for name in ("people", "sessions", "qualifications", "audit_log", "badges", "bookings", "lab_keys"):
        assert before[name], f"the demo history has no {name}"

    made = run(source, "backup", **kit.config())
    assert made.exit_code == 0, made.output
    [backup_set] = kit.sets()
    assert f"{len(before['people'])} people, {len(before['sessions'])} sessions" in made.output
    assert sorted(p.name for p in backup_set.iterdir()) == [DATABASE, MANIFEST, SECRETS]
    # Nothing of the data or the secrets is readable without the key.
    sealed = (backup_set / DATABASE).read_bytes() + (backup_set / SECRETS).read_bytes()
    lab_secrets = [row[1] for row in before["lab_keys"]]  # the lab's keys (base64), restored below
    for plain in (ADMIN_EMAIL, "test-secret-key", "bridge-secret-pw", "pi-laser-1", "certificate-key-1234"):
        assert plain.encode() not in sealed, plain
    for secret in lab_secrets:
        assert secret.encode() not in sealed
    assert stat.S_IMODE(backup_set.stat().st_mode) == 0o700
    manifest = json.loads((backup_set / MANIFEST).read_text())
    assert manifest["database"] == backend
    assert manifest["counts"]["sessions"] == len(before["sessions"])
    status = kit.status()
    assert status["last_run"]["ok"] is True and status["last_success"]["set"] == backup_set.name
    assert status["last_failure"] is None

    target = new_database()
    secrets_dir = tmp_path / "restored-secrets"
    restored = run(
        target, "restore", str(backup_set), "--key", str(kit.key), "--secrets-to", str(secrets_dir)
    )
    assert restored.exit_code == 0, restored.output
    assert f"restored {backup_set.name}" in restored.output
    assert snapshot(target) == before

    # The secrets a restored server needs, ready to put in place.
    env = (secrets_dir / "werkbank.env").read_text().splitlines()
    assert "SECRET_KEY=test-secret-key" in env
    assert "WERKBANK_CERTIFICATE_KEY=certificate-key-1234" in env
    assert f"MQTT_URL={BRIDGE_URL}" in env
    copied = secrets_dir / "files" / kit.passwd.resolve().relative_to("/")
    assert copied.read_text() == kit.passwd.read_text()
    assert (secrets_dir / "files" / kit.ca.resolve().relative_to("/")).read_text() == kit.ca.read_text()
    notes = (secrets_dir / "RESTORE.txt").read_text()
    assert (
        f"-m 0640 -o {_user()} -g {_group(kit.passwd)} files{kit.passwd.resolve()} {kit.passwd.resolve()}"
        in notes
    )
    assert stat.S_IMODE((secrets_dir / "werkbank.env").stat().st_mode) == 0o600

    # The restored server goes on where the old one stopped: new rows get new ids, and the
    # audit log says who restored what.
    database = Database()
    database.init(target)
    try:
        with database.session() as s:
            newest = s.scalar(select(func.max(Person.id)))
            newcomer = Person(site_id=s.scalar(select(Person.site_id)), name="After Restore")
            s.add(newcomer)
            s.flush()
            assert newest is not None and newcomer.id > newest
            entry = s.scalar(select(AuditLog).where(AuditLog.action == "backup.restored"))
            assert entry is not None and entry.subject == backup_set.name
    finally:
        database.dispose()
    # The lab's certificate key came back with the database: the same public key, printed.
    published = run(source, "certificate-key")
    assert published.exit_code == 0, published.output
    assert "key id " in published.output and "BEGIN PUBLIC KEY" in published.output
    assert run(target, "certificate-key").output == published.output
    # The source got its own entry: who made which backup.
    with _session(source) as s:
        made_entry = s.scalar(select(AuditLog).where(AuditLog.action == "backup.created"))
        assert made_entry is not None and made_entry.subject == backup_set.name


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _group(path: Path) -> str:
    import grp

    return grp.getgrgid(path.stat().st_gid).gr_name


class _session:
    """A short session on ``url`` (``with _session(url) as s``)."""

    def __init__(self, url: str) -> None:
        self.database = Database()
        self.database.init(url)
        self.context = self.database.session()

    def __enter__(self) -> Any:
        return self.context.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.context.__exit__(*exc)
        self.database.dispose()


def test_sqlite_backup_is_consistent_while_the_server_writes(kit: Kit, tmp_path: Path) -> None:
    """SQLite's online backup copies one consistent state while another process commits: each
    writer transaction adds two audit entries, so a torn copy would hold an odd number."""
    source = f"sqlite:///{tmp_path / 'live.sqlite'}"
    upgrade(source)
    # Some megabytes, so that copying them takes a while during which the writer commits.
    with sqlite3.connect(tmp_path / "live.sqlite") as conn:
        conn.executemany(
            "INSERT INTO audit_log (at, actor_label, action, subject, detail) VALUES (?, 'old', 'old', ?, ?)",
            [(datetime.now(UTC).isoformat(), f"#{n}", json.dumps({"pad": "x" * 999})) for n in range(8_000)],
        )
    conn.close()
    stop = threading.Event()
    commits = [0]

    def write() -> None:
        conn = sqlite3.connect(tmp_path / "live.sqlite", timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        try:
            while not stop.is_set():
                with conn:
                    for n in (1, 2):
                        conn.execute(
                            "INSERT INTO audit_log (at, actor_label, action, subject, detail) "
                            "VALUES (?, 'writer', 'test.write', ?, '{}')",
                            (datetime.now(UTC).isoformat(), f"pair {commits[0]} #{n}"),
                        )
                commits[0] += 1
                time.sleep(0.002)  # a busy server, not one that holds the GIL all the time
        finally:
            conn.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(3):
            result = run(source, "backup", **kit.config())
            assert result.exit_code == 0, result.output
    finally:
        stop.set()
        writer.join()
    assert commits[0] > 10, "the writer ran alongside"
    counts = []
    for n, backup_set in enumerate(kit.sets()):
        target = f"sqlite:///{tmp_path / f'restored-{n}.sqlite'}"
        out = tmp_path / f"secrets-{n}"
        result = run(target, "restore", str(backup_set), "--key", str(kit.key), "--secrets-to", str(out))
        assert result.exit_code == 0, result.output
        conn = sqlite3.connect(target.removeprefix("sqlite:///"))
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        written = conn.execute("SELECT count(*) FROM audit_log WHERE action = 'test.write'").fetchone()[0]
        conn.close()
        assert written % 2 == 0, f"{backup_set.name} holds half a transaction"
        counts.append(written)
    assert len(counts) == 3 and counts == sorted(counts) and counts[-1] > 0


def test_rotation_keeps_the_newest_sets_and_a_failure_removes_none(kit: Kit, tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'source.sqlite'}"
    upgrade(source)
    names = []
    for _ in range(4):
        result = run(source, "backup", "--keep", "2", **kit.config())
        assert result.exit_code == 0, result.output
        names.append(kit.sets()[-1].name)
    assert len(set(names)) == 4, "one set per run, even within a second"
    assert [p.name for p in kit.sets()] == names[-2:]
    assert f"removed older sets (keeping 2): {names[1]}" in result.output
    # A run killed half-way leaves a partial folder: never counted, cleared by the next run.
    (kit.backups / ".partial-killed").mkdir()
    (kit.backups / ".partial-killed" / "database.sqlite").write_text("plaintext left behind")
    kit.key.rename(tmp_path / "key-away")
    failed = run(source, "backup", "--keep", "1", **kit.config())
    assert failed.exit_code != 0
    assert [p.name for p in kit.sets()] == names[-2:], "a failed run removes no backup"
    (tmp_path / "key-away").rename(kit.key)
    result = run(source, "backup", "--keep", "1", **kit.config())
    assert result.exit_code == 0, result.output
    assert len(kit.sets()) == 1 and not (kit.backups / ".partial-killed").exists()


def test_sets_made_within_one_second_or_after_the_clock_went_back_are_kept(kit: Kit, tmp_path: Path) -> None:
    """The newest set is the one just made, even when the clock says otherwise: four runs in one
    second get -2, -3, -4 (never a name rotation freed), and a run after the clock was set back
    is not rotated away as the oldest."""
    from server.adapters.backup import BackupSettings, create_backup

    source = f"sqlite:///{tmp_path / 'source.sqlite'}"
    upgrade(source)
    config = {name: getattr(TestConfig, name) for name in dir(TestConfig) if name.isupper()} | kit.config()
    settings = BackupSettings.from_config(config, keep=2)
    second = datetime(2026, 11, 18, 2, 30, tzinfo=UTC)
    made = [create_backup(source, settings, config, second).path.name for _ in range(4)]
    stamp = "werkbank-20261118T023000Z"
    assert made == [stamp, f"{stamp}-2", f"{stamp}-3", f"{stamp}-4"]
    assert [p.name for p in kit.sets()] == made[-2:]
    back = create_backup(source, settings, config, datetime(2026, 11, 17, 2, 30, tzinfo=UTC))
    assert back.path.is_dir() and back.removed == [f"{stamp}-3"]
    assert sorted(p.name for p in kit.sets()) == sorted([back.path.name, f"{stamp}-4"])


# -- what a restore refuses -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine_backup(filled_template: str, module_key: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One backup set of the filled database per module; tests damage copies of it."""
    folder = tmp_path_factory.mktemp("pristine")
    result = run(filled_template, "backup", "--dir", str(folder), BACKUP_KEY_FILE=str(module_key))
    assert result.exit_code == 0, result.output
    [made] = folder.glob("werkbank-*")
    return made


@pytest.fixture
def one_backup(pristine_backup: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copied" / pristine_backup.name
    shutil.copytree(pristine_backup, copy)
    return copy


@pytest.fixture
def empty_target(backend: str, scratch: Scratch, tmp_path: Path) -> str:
    """A database a refused restore must leave empty: a SQLite path of this test's own, or one
    empty PostgreSQL database the module's refusal tests share (each checks it is still empty)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'target.sqlite'}"
    if scratch.empty is None:
        scratch.empty = _create(scratch.names)
    assert untouched(scratch.empty), "an earlier test wrote into the shared empty database"
    return scratch.empty


def _restore(target: str, backup_set: Path, key: Path, secrets_dir: Path) -> Result:
    return run(target, "restore", str(backup_set), "--key", str(key), "--secrets-to", str(secrets_dir))


def test_restore_with_the_wrong_key_is_refused_and_changes_nothing(
    one_backup: Path, empty_target: str, tmp_path: Path
) -> None:
    other = tmp_path / "other.key"
    assert run("sqlite://", "backup-key", "--out", str(other)).exit_code == 0
    target = empty_target
    result = _restore(target, one_backup, other, tmp_path / "secrets")
    assert result.exit_code == 1
    assert "wrong key" in result.output and "Nothing was changed" in result.output
    assert untouched(target) and not (tmp_path / "secrets").exists()
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    result = _restore(target, one_backup, garbage, tmp_path / "secrets")
    assert result.exit_code == 1 and "is not a backup key" in result.output
    assert untouched(target)


def _fix_manifest(backup_set: Path) -> None:
    """Make the manifest's checksums match the files again (a tamperer would)."""
    import hashlib

    manifest = json.loads((backup_set / MANIFEST).read_text())
    for part in (DATABASE, SECRETS):
        manifest["files"][part]["sha256"] = hashlib.sha256((backup_set / part).read_bytes()).hexdigest()
    (backup_set / MANIFEST).write_text(json.dumps(manifest))


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ("flipped byte", "SHA-256 differs from the manifest"),
        ("flipped byte, manifest fixed", "does not verify"),
        ("cut off, manifest fixed", "cut off"),
        ("secrets flipped, manifest fixed", "secrets.enc does not verify"),
        ("database of another set, manifest fixed", "does not belong to this backup set"),
        ("manifest missing", "has no manifest.json"),
    ],
)
def test_restore_of_a_damaged_backup_is_refused_and_changes_nothing(
    damage: str,
    said: str,
    one_backup: Path,
    empty_target: str,
    filled_template: str,
    kit: Kit,
    tmp_path: Path,
) -> None:
    database = one_backup / DATABASE
    size = database.stat().st_size
    if damage.startswith("flipped byte"):
        _flip(database, size - 100)  # in the last part: found before pg_restore reads a byte
    elif damage.startswith("cut off"):
        database.write_bytes(database.read_bytes()[: size // 2])
    elif damage.startswith("secrets"):
        _flip(one_backup / SECRETS, 60)
    elif damage.startswith("database of another set"):
        assert run(filled_template, "backup", "--dir", str(tmp_path / "other"), **kit.config()).exit_code == 0
        [other] = sorted((tmp_path / "other").glob("werkbank-*"))
        database.write_bytes((other / DATABASE).read_bytes())
    elif damage == "manifest missing":
        (one_backup / MANIFEST).unlink()
    if "manifest fixed" in damage:
        _fix_manifest(one_backup)
    target = empty_target
    result = _restore(target, one_backup, kit.key, tmp_path / "secrets")
    assert result.exit_code == 1, result.output
    assert said in result.output
    assert untouched(target) and not (tmp_path / "secrets").exists()


def test_restore_into_a_database_that_is_not_empty_is_refused_and_changes_nothing(
    one_backup: Path, new_database: Callable[..., str], kit: Kit, tmp_path: Path
) -> None:
    schema_only = new_database()
    upgrade(schema_only)  # `werkbank db upgrade` by habit, before the restore
    lab = new_database(filled=True)
    for target in (schema_only, lab):
        before = snapshot(target)
        result = _restore(target, one_backup, kit.key, tmp_path / "secrets")
        assert result.exit_code == 1
        assert "is not empty" in result.output and "Nothing was changed" in result.output
        assert snapshot(target) == before
        assert not (tmp_path / "secrets").exists()


def test_restore_into_another_kind_of_database_is_refused(one_backup: Path, kit: Kit, tmp_path: Path) -> None:
    manifest = json.loads((one_backup / MANIFEST).read_text())
    other = (
        f"sqlite:///{tmp_path / 'other.sqlite'}"
        if manifest["database"] == "postgresql"
        else "postgresql+psycopg://nobody@127.0.0.1:9/none"
    )
    result = _restore(other, one_backup, kit.key, tmp_path / "secrets")
    assert result.exit_code == 1 and "restore into the same kind of database" in result.output
    assert not (tmp_path / "secrets").exists()


# -- failures made visible ------------------------------------------------------------------------


def test_backup_without_pg_dump_says_what_to_install_and_changes_nothing(
    backend: str,
    new_database: Callable[..., str],
    kit: Kit,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a PostgreSQL run the failure is also audited and told; on a SQLite run the PostgreSQL
    URL goes nowhere, and the status file alone records it."""
    if backend == "postgresql":
        url = new_database(filled=True)
    else:
        url = "postgresql+psycopg://nobody@127.0.0.1:9/none"
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    monkeypatch.setenv("PATH", str(empty_path))
    result = run(url, "backup", **kit.config())
    assert result.exit_code == 1
    assert "pg_dump is not installed" in result.output and "postgresql-client" in result.output
    assert kit.sets() == [] and [p.name for p in kit.backups.iterdir()] == [STATUS_FILE]
    status = kit.status()
    assert status["last_run"]["ok"] is False
    assert "pg_dump is not installed" in status["last_failure"]["message"]
    if backend == "postgresql":
        with _session(url) as s:
            entry = s.scalar(select(AuditLog).where(AuditLog.action == "backup.failed"))
            assert entry is not None and "pg_dump" in entry.detail["error"]
            assert s.scalar(select(func.count()).select_from(Notification)) == 1


def test_restore_without_pg_restore_says_what_to_install(
    backend: str,
    one_backup: Path,
    empty_target: str,
    kit: Kit,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = empty_target
    monkeypatch.setenv("PATH", str(tmp_path))
    if backend != "postgresql":
        # SQLite needs no tool beyond Python: the same restore goes through without PATH.
        assert _restore(target, one_backup, kit.key, tmp_path / "secrets").exit_code == 0
        return
    result = _restore(target, one_backup, kit.key, tmp_path / "secrets")
    assert result.exit_code == 1
    assert "pg_restore is not installed" in result.output and "postgresql-client" in result.output
    assert untouched(target) and not (tmp_path / "secrets").exists()


def test_a_failed_backup_leaves_the_status_file_an_audit_entry_and_a_notice(
    new_database: Callable[..., str],
    kit: Kit,
    tmp_path: Path,
    smtp_server: tuple[Inbox, SmtpSettings],  # noqa: F811 - the fixture imported above
) -> None:
    inbox, smtp = smtp_server
    source = new_database(filled=True)
    mail = {
        "SMTP_HOST": smtp.host,
        "SMTP_PORT": smtp.port,
        "SMTP_USER": smtp.user,
        "SMTP_PASSWORD": smtp.password,
        "SMTP_FROM": smtp.sender,
        "SMTP_STARTTLS": False,
    }
    good = run(source, "backup", **kit.config(**mail))
    assert good.exit_code == 0, good.output
    [kept] = kit.sets()
    last_success = kit.status()["last_success"]

    kit.key.rename(tmp_path / "key-elsewhere")  # e.g. a new server without the key put in place
    failed = run(source, "backup", **kit.config(**mail))
    assert failed.exit_code == 1
    assert "backup failed: no backup key at" in failed.output and "werkbank backup-key" in failed.output
    assert kit.sets() == [kept]

    status = kit.status()
    assert status["last_run"]["ok"] is False
    assert status["last_failure"]["message"].startswith(f"no backup key at {kit.key}")
    assert status["last_success"] == last_success, "the last good backup stays on record"

    with _session(source) as s:
        entry = s.scalar(select(AuditLog).where(AuditLog.action == "backup.failed"))
        assert entry is not None and entry.actor_label.startswith("cli:")
        assert entry.detail["error"].startswith("no backup key")
        [(admin, notice)] = s.execute(
            select(Person, Notification).join(Notification, Notification.person_id == Person.id)
        ).all()
        assert admin.email == ADMIN_EMAIL and notice.kind == notifications.BACKUP_FAILED
        german = notifications.render(notice, "de")
        english = notifications.render(notice, "en")
    assert german.startswith("Die Datensicherung vom ") and "ist fehlgeschlagen: no backup key at" in german
    assert english.startswith("The backup on ") and "failed: no backup key at" in english
    # E-mailed at once, in the admin's language, without waiting for the scheduler.
    [message] = inbox.to(ADMIN_EMAIL)
    assert message["Subject"] == "Die Datensicherung ist fehlgeschlagen"
    assert "no backup key at" in str(message.get_body(preferencelist=("plain",)).get_content())  # type: ignore[union-attr]


def test_a_backup_missing_a_file_it_is_told_to_keep_fails_and_names_it(kit: Kit, tmp_path: Path) -> None:
    """A set without Mosquitto's password file would leave every Pi locked out after a restore:
    a file named in WERKBANK_BACKUP_FILES that is not there fails the run."""
    source = f"sqlite:///{tmp_path / 'source.sqlite'}"
    upgrade(source)
    kit.passwd.unlink()
    result = run(source, "backup", **kit.config())
    assert result.exit_code == 1
    assert f"{kit.passwd} is missing" in result.output and "WERKBANK_BACKUP_FILES" in result.output
    assert kit.sets() == []
    assert kit.status()["last_failure"]["message"].startswith(f"{kit.passwd} is missing")


def test_a_backup_that_fails_half_way_leaves_no_partial_set(kit: Kit, tmp_path: Path) -> None:
    """A damaged SQLite file is found while it is copied: the run fails, nothing half-written stays
    in the backup folder, the older backup is still there."""
    path = tmp_path / "source.sqlite"
    source = f"sqlite:///{path}"
    fill(source)
    assert run(source, "backup", **kit.config()).exit_code == 0
    [older] = kit.sets()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    for at in range(len(data) // 3, len(data) // 3 + 40_000, 997):
        data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    result = run(source, "backup", **kit.config())
    assert result.exit_code == 1 and "backup failed" in result.output
    assert kit.sets() == [older]
    assert sorted(p.name for p in kit.backups.iterdir() if p.name != ".lock") == sorted(
        [older.name, STATUS_FILE]
    )
    assert "is damaged" in result.output  # then what SQLite found first: a page, a malformed image
    assert kit.status()["last_run"]["ok"] is False


# -- after a restore ------------------------------------------------------------------------------


def test_a_pi_holding_a_newer_allowlist_than_the_restored_database_takes_the_next_one(
    new_database: Callable[..., str], kit: Kit, tmp_path: Path, mqtt_url: str
) -> None:
    """The old server issued lists after the last backup; a Pi holds one of those when the new
    server starts on the restored database. The agent ignores a lower version as a replay, so the
    restored server numbers its next list above the one the Pi reports it holds."""
    import uuid

    from server.adapters.bridge import Bridge
    from server.models import Device, Machine
    from tests.mqtt_peer import Peer
    from werkbank_protocol import format_ts
    from werkbank_protocol.allowlist import key_bytes, verify

    source = new_database(filled=True)
    with _session(source) as s:
        device = s.scalar(select(Device).where(Device.machine_id.is_not(None)).order_by(Device.id))
        machine = s.get(Machine, device.machine_id)
        machine.allowlist_version = 7  # what the old server had issued at the backup
        device_id, slug, key = device.id, machine.slug, key_bytes(machine.allowlist_key)
    assert run(source, "backup", **kit.config()).exit_code == 0
    target = new_database()
    [made] = kit.sets()
    assert _restore(target, made, kit.key, tmp_path / "secrets").exit_code == 0

    lists = f"werkbank/v1/dev/{device_id}/allowlist"
    pi = Peer(mqtt_url)
    pi.subscribe(lists)
    restored = Database()
    restored.init(target)
    bridge = Bridge(restored, mqtt_url, client_id=f"bridge-{uuid.uuid4().hex[:6]}")
    bridge.start()
    try:
        # The Pi reconnects holding version 12, issued by the old server after the backup.
        status = {
            "v": 1,
            "online": True,
            "state": "locked",
            "allowlist_version": 12,
            "ts": format_ts(datetime.now(UTC)),
        }
        pi.publish(f"werkbank/v1/dev/{device_id}/status", json.dumps(status))
        versions = []
        while not versions or versions[-1] <= 12:
            payload = pi.next(lists, timeout=10)
            versions.append(verify(key, payload, datetime.now(UTC), machine=slug).version)
        assert versions[-1] == 13, versions
    finally:
        bridge.stop()
        pi.close()
        restored.dispose()


# -- the key --------------------------------------------------------------------------------------


def test_backup_key_is_private_and_never_overwritten(tmp_path: Path) -> None:
    key = tmp_path / "etc" / "backup.key"
    result = run("sqlite://", "backup-key", "--out", str(key))
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "AWAY from this server" in result.output and "password manager" in result.output
    first = key.read_bytes()
    again = run("sqlite://", "backup-key", "--out", str(key))
    assert again.exit_code == 1 and "exists already" in again.output and "Nothing was changed" in again.output
    assert key.read_bytes() == first
