"""The ``werkbank`` command's subcommands (Flask CLI): processes, database, data, demo.

server/__main__.py builds the command itself; server/app.py puts these on every app."""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import queue
import re
import signal
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from server.config import VAR_DIR
from werkbank_protocol import ProtocolError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger("werkbank")
DEMO_FILE = Path(__file__).resolve().parent / "adapters" / "demo" / "demo.yaml"
BROKER_URL_FILE = VAR_DIR / "broker.url"


def _mqtt_url() -> str:
    url = current_app.config["MQTT_URL"]
    if url:
        return str(url)
    if BROKER_URL_FILE.exists():  # the broker of a running `werkbank up`
        return BROKER_URL_FILE.read_text().strip()
    raise click.ClickException(
        "MQTT_URL is not set (e.g. mqtt://127.0.0.1:1883) and no `werkbank up` is running"
    )


# -- database ------------------------------------------------------------------------------
@click.group("db")
def db_group() -> None:
    """Database schema (Alembic migrations)."""


@db_group.command("upgrade")
@click.option(
    "--revision",
    default="head",
    show_default=True,
    help="Stop at this revision. Only forward: an older one is refused (restore a backup instead).",
)
@with_appcontext
def db_upgrade(revision: str) -> None:
    """Bring the database schema up to date (refuses a schema newer than this Werkbank, and a
    revision older than the database's)."""
    from alembic.util import CommandError

    from server.migrate import ForeignKeyViolation, SchemaError, upgrade

    try:
        result = upgrade(current_app.config["DATABASE_URL"], revision)
    except (SchemaError, ForeignKeyViolation) as exc:
        raise click.ClickException(str(exc)) from exc
    except CommandError as exc:  # e.g. --revision names no migration, or one older than the database's
        raise click.ClickException(f"{exc}. Nothing was changed.") from exc
    if not result.applied:
        click.echo(f"database is up to date (schema {result.before.describe()})")
        return
    click.echo(
        f"upgraded the database schema from {result.before.describe()} to {result.applied[-1]} "
        f"({len(result.applied)} migrations)"
    )
    if result.rebuilt_days is not None:
        click.echo(f"computed the usage aggregates from the history: {result.rebuilt_days} machine-days")
    if result.rebuild_pending:
        click.echo(
            "the usage aggregates are new in this schema: once the database is at the newest schema, "
            "run `werkbank usage rebuild` to compute them from the history"
        )


@db_group.command("status")
@with_appcontext
def db_status() -> None:
    """Say whether the database's schema is this Werkbank's (exit code 1 if not)."""
    from server.migrate import problem, schema_state

    state = schema_state(current_app.config["DATABASE_URL"])
    click.echo(f"database schema: {state.describe()}; this Werkbank's: {', '.join(state.heads)}")
    wrong = problem(state)
    if wrong is not None:
        raise click.ClickException(f"{wrong}.")
    click.echo("the schema is current")


def _require_schema(process: str) -> None:
    """Refuse to start on a schema that is not this code's (README, "Upgrading")."""
    from server.migrate import SchemaError, require_current

    try:
        require_current(current_app.config["DATABASE_URL"], process)
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def load_cmd(file: Path) -> None:
    """Load sites, people, badges, competencies, machines and devices from a YAML FILE."""
    from server.extensions import db
    from server.services.lab_file import LoadError, load, parse

    try:
        lab = parse(file.read_text(encoding="utf-8"))
        with db.session() as session:
            counts = load(session, lab, source=file.name, actor_label=f"cli:{_os_user()}")
    except LoadError as exc:
        raise click.ClickException(f"{file}: {exc}. Nothing was changed.") from exc
    summary = ", ".join(f"{n} {k}" for k, n in counts.items()) or "nothing"
    click.echo(f"loaded {summary} from {file}")


def _os_user() -> str:
    """Who runs the command, for the audit log (the CLI has no login)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (a container)
        return f"uid {os.getuid()}"


# -- backups -------------------------------------------------------------------------------
@click.command("backup")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of the backup sets (default: WERKBANK_BACKUP_DIR).",
)
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=None,
    help="Keep the newest N sets, remove older ones (default: WERKBANK_BACKUP_KEEP, 14).",
)
@with_appcontext
def backup_cmd(directory: Path | None, keep: int | None) -> None:
    """Back up the database and the secrets a restored server needs, encrypted (one set per run).

    A failure exits non-zero and is recorded in backup-status.json beside the sets, in the audit
    log, and told to every active admin (app and e-mail)."""
    from server.adapters import backup
    from server.extensions import db
    from server.models import utcnow

    cfg = current_app.config
    settings = backup.BackupSettings.from_config(cfg, directory, keep)
    now = utcnow()
    actor = f"cli:{_os_user()}"
    try:
        result = backup.create_backup(cfg["DATABASE_URL"], settings, cfg, now)
    except Exception as exc:
        known = isinstance(exc, backup.BackupError | OSError)
        message = str(exc) if known else f"{type(exc).__name__}: {exc}"
        log.error("backup failed: %s", message, exc_info=not known)
        for problem in backup.record_failure(db, cfg, settings.directory, now, message, actor):
            log.error("backup failure: %s", problem)
        raise click.ClickException(f"backup failed: {message}") from exc
    backup.record_success(db, result, now, actor)
    if not cfg.get("SECRET_KEY_FROM_ENV"):
        log.warning("SECRET_KEY is not set: this server's key changes at every start (README, Settings)")
    rows = _row_counts(result.counts)
    click.echo(f"backup {result.path} ({result.bytes / 1e6:.1f} MB in {result.seconds:.1f} s; {rows})")
    if result.removed:
        click.echo(f"removed older sets (keeping {settings.keep}): {', '.join(result.removed)}")


def _row_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts.get(t, 0)} {t}" for t in ("people", "sessions", "qualifications", "audit_log"))


@click.command("backup-key")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the key (default: WERKBANK_BACKUP_KEY_FILE).",
)
@with_appcontext
def backup_key_cmd(out: Path | None) -> None:
    """Make the key backups are encrypted with (mode 0600; never over an existing key)."""
    from server.adapters import backup

    path = out or Path(current_app.config["BACKUP_KEY_FILE"])
    try:
        kid = backup.create_key_file(path)
    except backup.BackupError as exc:
        raise click.ClickException(f"{exc}. Nothing was changed.") from exc
    click.echo(f"backup key written to {path} (mode 0600, key id {kid})")
    click.echo(
        "Keep a copy AWAY from this server, e.g. in the lab's password manager or printed in a safe "
        f"(its one line is the key: cat {path}). Without it no backup can be restored; with it anyone "
        "who has a backup can read it."
    )
    click.echo(
        "The nightly backup needs this file on the server (WERKBANK_BACKUP_KEY_FILE), readable by the "
        f"user it runs as: sudo chown werkbank: {path}"
    )


@click.command("certificate-key")
@with_appcontext
def certificate_key_cmd() -> None:
    """Print the lab's public certificate key (made now if there is none yet), to publish it
    where employers find it without asking this server (docs/proof.md, "Checking offline")."""
    from server.extensions import db
    from server.services import lab_keys

    _require_schema("certificate-key")
    with db.session() as session:
        lab_keys.signing_key(session)
    with db.session() as session:
        for key in lab_keys.public_keys(session):
            state = "current" if key.current else "retired"
            click.echo(f"key id {key.key_id} ({state}, made {key.created_at:%Y-%m-%d}), Ed25519")
            click.echo(f"public key (base64): {key.base64}")
            click.echo(key.pem.rstrip())


@click.command("restore")
@click.argument("backup_set", metavar="BACKUP", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The backup key file (`werkbank backup-key` made it).",
)
@click.option(
    "--database-url", default=None, help="The EMPTY database to restore into (default: DATABASE_URL)."
)
@click.option(
    "--secrets-to",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="New folder for the restored settings and files (default: ./werkbank-restore-<time>).",
)
@with_appcontext
def restore_cmd(backup_set: Path, key_file: Path, database_url: str | None, secrets_to: Path | None) -> None:
    """Restore the backup set BACKUP (a werkbank-<time> folder) into an empty database."""
    from server.adapters import backup
    from server.db import Database
    from server.migrate import problem, schema_state
    from server.services import audit

    url = database_url or current_app.config["DATABASE_URL"]
    try:
        result = backup.restore_backup(backup_set, key_file, url, secrets_to)
    except backup.BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    restored = Database()
    restored.init(url)
    try:
        with restored.session() as session:
            audit.record(
                session,
                None,
                "backup.restored",
                result.name,
                {"created": result.created, "secrets_to": str(result.secrets_dir)},
                actor_label=f"cli:{_os_user()}",
            )
    except Exception as exc:  # an older schema's audit log (before `werkbank db upgrade`)
        log.warning("restore not written to the audit log: %s", str(exc).splitlines()[0])
    finally:
        restored.dispose()
    rows = _row_counts(result.counts)
    click.echo(f"restored {result.name} (made {result.created}) into {backup._safe(url)}: {rows}")
    click.echo(f"settings and files in {result.secrets_dir}: put them in place as its RESTORE.txt says")
    wrong = problem(schema_state(url))
    if wrong is not None:  # a backup of an older (or newer) Werkbank
        click.echo(f"before you start the server: {wrong}")


# -- processes -----------------------------------------------------------------------------
@click.command("web")
@click.option("--host", default=None, help="Address to listen on (WERKBANK_HOST).")
@click.option("--port", type=int, default=None, help="Port (WERKBANK_PORT).")
def web_cmd(host: str | None, port: int | None) -> None:
    """Serve the web pages and API (threaded; put gunicorn + nginx in front in production)."""
    from werkzeug.serving import run_simple

    _require_schema("web")
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    run_simple(
        host or app.config["WEB_HOST"], port or app.config["WEB_PORT"], app, threaded=True, use_reloader=False
    )


@click.command("bridge")
@click.option(
    "--half",
    type=click.Choice(["ingest"]),
    default=None,
    hidden=True,
    help="Run as the ingest half of a split bridge (started by the tap half, not by hand).",
)
def bridge_cmd(half: str | None) -> None:
    """Run the MQTT bridge: decisions, event ingestion, device state, allow-lists.

    On PostgreSQL it runs as two processes (WERKBANK_BRIDGE_PROCESSES): this one answers the
    taps, a child of it takes in events, status and telemetry (server/adapters/bridge_processes.py)."""
    from server.adapters.bridge import Bridge
    from server.adapters.bridge_processes import IngestHalf, ingest_half_argv, serve_as_ingest_half
    from server.extensions import db

    _require_schema("bridge")
    cfg = current_app.config
    processes = cfg["BRIDGE_PROCESSES"] or (1 if db.engine.dialect.name == "sqlite" else 2)
    if processes not in (1, 2):
        raise click.ClickException(
            f"WERKBANK_BRIDGE_PROCESSES must be 0 (automatic), 1 or 2, not {processes}"
        )
    nice = cfg["BRIDGE_INGEST_NICE"]
    if not 0 <= nice <= 19:
        raise click.ClickException(f"WERKBANK_BRIDGE_INGEST_NICE must be between 0 and 19, not {nice}")
    role = half or ("all" if processes == 1 else "taps")
    client_id = cfg["MQTT_CLIENT_ID"] if role != "taps" else f"{cfg['MQTT_CLIENT_ID']}-taps"
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    bridge = Bridge(
        db,
        _mqtt_url(),
        client_id=client_id,
        allowlist_days=cfg["ALLOWLIST_DAYS"],
        max_open_sessions=cfg["MAX_OPEN_SESSIONS"],
        shared=cfg["MQTT_SHARED_SUBSCRIPTIONS"],
        ca_file=cfg["MQTT_CA_FILE"],
        message_limit=cfg["MQTT_MESSAGE_LIMIT"],
        tap_max_age_s=cfg["TAP_MAX_AGE_MS"] / 1000,
        ingest_timeout_s=cfg["INGEST_TIMEOUT_S"],
        role=role,
        login=cfg["MQTT_CLIENT_ID"],
    )
    if half == "ingest":
        serve_as_ingest_half(bridge, stop, nice)
        bridge.start()
        try:
            stop.wait()
        finally:
            bridge.stop()
            rejected = dict(bridge.rejected) or "none"
            log.info("bridge ingest half stopped; rejected messages by reason: %s", rejected)
        return
    child = None
    if role == "taps":
        bridge.peer = {"connected": False}  # until the ingest half says otherwise

        def take(counters: dict[str, Any]) -> None:
            bridge.peer = counters

        child = IngestHalf(ingest_half_argv(), take)
    bridge.start()
    if cfg["BRIDGE_METRICS_PORT"]:
        from server.metrics import serve

        serve(bridge.metrics.registry, cfg["BRIDGE_METRICS_PORT"])
    failed = False
    announced = child is None
    try:
        while not stop.wait(0.1):
            if not announced and bridge.connected.is_set() and bridge.peer.get("connected"):
                log.info("bridge connected to %s (its tap and ingest halves)", bridge.address.url)
                announced = True
            if child is not None and not child.alive():
                # Both halves or neither: exit, and systemd or compose starts both again.
                log.error("bridge: the ingest half ended (exit code %s); stopping", child.proc.returncode)
                failed = True
                break
    finally:
        bridge.stop()
        if child is not None:
            child.stop()
        log.info("bridge stopped; rejected messages by reason: %s", dict(bridge.rejected) or "none")
    if failed:
        raise SystemExit(1)


@click.command("scheduler")
def scheduler_cmd() -> None:
    """Run the timed jobs (only one scheduler runs at a time; a second one waits)."""
    from server.adapters.scheduler import LOCK_RETRY_S, build_scheduler, singleton_lock
    from server.extensions import db

    url = current_app.config["DATABASE_URL"]
    _require_schema("scheduler")
    while True:
        with singleton_lock(db, url) as held:
            if held:
                from server.adapters.scheduler import JobRuns
                from server.metrics import scheduler_registry, serve

                runs = JobRuns()
                scheduler: Any = build_scheduler(db, current_app.config, runs)
                if current_app.config["SCHEDULER_METRICS_PORT"]:
                    serve(scheduler_registry(runs), current_app.config["SCHEDULER_METRICS_PORT"])

                def shutdown(*_: object, running: Any = scheduler) -> None:
                    running.shutdown(wait=False)

                signal.signal(signal.SIGINT, shutdown)
                signal.signal(signal.SIGTERM, shutdown)
                log.info("scheduler running")
                scheduler.start()
                return
        log.info("another scheduler holds the lock; waiting")
        time.sleep(LOCK_RETRY_S)


# -- simulation ----------------------------------------------------------------------------
@click.command("tap")
@click.argument("machine")
@click.argument("uid")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for the decision.")
@with_appcontext
def tap_cmd(machine: str, uid: str, timeout: float) -> None:
    """Present badge UID to the simulated reader of MACHINE and print what the machine says."""
    from sqlalchemy import select

    from server.extensions import db
    from server.models import Device, Machine
    from werkbank_protocol.messages import (
        BADGE_PATTERN,
        AuthResp,
        LockDeferred,
        SessionEnded,
        SimTap,
        decode_as,
        decode_event,
        encode,
    )
    from werkbank_protocol.mqtt import BrokerAddress, make_client, parse_mqtt_url
    from werkbank_protocol.topics import Suffix, topic

    uid = uid.upper()
    if not re.match(BADGE_PATTERN, uid):
        raise click.ClickException(f"{uid!r} is not a badge UID: use 8, 14 or 20 hex characters")
    with db.session() as session:
        device_id = session.scalar(select(Device.id).join(Machine).where(Machine.slug == machine))
    if device_id is None:
        raise click.ClickException(f"no device serves machine {machine!r}")
    address = parse_mqtt_url(_mqtt_url())
    client_id = f"werkbank-tap-{uuid.uuid4().hex[:8]}"
    if address.username is None:
        address = BrokerAddress(address.host, address.port, client_id, None, address.tls)
    client = make_client(client_id, address, clean_session=True, ca_file=current_app.config["MQTT_CA_FILE"])
    answers: queue.Queue[str] = queue.Queue()

    def on_resp(_c: Any, _u: Any, msg: Any) -> None:
        with contextlib.suppress(ProtocolError):
            resp = decode_as(AuthResp, msg.payload)
            # The person's own language first, as a display at the machine would show it.
            first = resp.lang if resp.lang in resp.message else "en"
            others = [text for code, text in resp.message.items() if code != first]
            answers.put(
                f"{resp.decision} ({resp.reason}): {resp.message.get(first, '')}"
                + "".join(f"\n    {text}" for text in others)
            )

    def on_event(_c: Any, _u: Any, msg: Any) -> None:
        # A tap out is decided by the agent alone: its session_ended event is the answer.
        with contextlib.suppress(ProtocolError):
            event = decode_event(msg.payload)
            if isinstance(event, SessionEnded):
                answers.put(f"session ended ({event.reason}) after {event.unlocked_s:.0f} s")
            elif isinstance(event, LockDeferred):
                answers.put("tap-out noted: a job is running, the machine locks when it ends")

    subscribed = threading.Event()
    client.message_callback_add(topic(device_id, Suffix.AUTH_RESP), on_resp)
    client.message_callback_add(topic(device_id, Suffix.EVENT), on_event)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_connect = lambda c, *_: c.subscribe(
        [(topic(device_id, Suffix.AUTH_RESP), 1), (topic(device_id, Suffix.EVENT), 1)]
    )
    client.connect(address.host, address.port)
    client.loop_start()
    try:
        if not subscribed.wait(timeout):
            raise click.ClickException(f"broker {address.url} did not answer")
        tap = encode(SimTap(v=1, badge=uid))
        sent = datetime.now(UTC)
        client.publish(topic(device_id, Suffix.SIM_TAP), tap, qos=1).wait_for_publish(timeout)
        try:
            click.echo(answers.get(timeout=timeout))
        except queue.Empty:
            with db.session() as session:
                why = _why_no_answer(session, machine, uid, sent)
            raise click.ClickException(f"no answer: {why}") from None
    finally:
        client.disconnect()
        client.loop_stop()


def _why_no_answer(db: Session, machine: str, uid: str, sent: datetime) -> str:
    """Why the agent said nothing the CLI can hear, from what the server knows: some taps the
    agent decides alone, without asking the server (a repeat of the unlocking badge, another
    badge while the machine is in use)."""
    from sqlalchemy import select

    from server.models import Device, Machine, MachineSession

    found = db.execute(
        select(Machine, Device).join(Device, Device.machine_id == Machine.id).where(Machine.slug == machine)
    ).first()
    if found is None:
        return f"no device serves machine {machine!r}"
    row, device = found
    if not device.online:
        return (
            f"the agent of {machine} ({device.id}) is not connected to the broker: start it "
            "(`werkbank up` starts the demo's agents) and `werkbank bridge`, then tap again"
        )
    session = db.get(MachineSession, row.live_session_id) if row.live_session_id else None
    if session is None:
        return (
            f"the agent of {machine} is connected but did not answer: is `werkbank bridge` running? "
            "Then tap again"
        )
    if session.badge_uid != uid:
        return (
            f"{machine} is in use by another badge, and its agent refuses other badges by itself "
            "without asking the server. Let that person tap out first, then tap again"
        )
    started = session.started_at
    since = (sent - started).total_seconds() if started is not None else None
    # The agent's config caps its tap-out grace at 60 s: a repeat later than that is no repeat.
    if since is not None and since < 60:
        return (
            f"the agent ignored this tap. This badge unlocked {machine} {since:.1f} s before, and the "
            "reader ignores the same badge for a moment after unlocking ([session] tap_out_grace_s, "
            "2 s by default), so that a card left on the reader does not end the session. "
            "Tap again after a moment to tap out"
        )
    return (
        f"this badge holds {machine}, but its agent did not answer the tap-out: is it still "
        "running? Tap again"
    )


@click.command("up")
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=DEMO_FILE,
    show_default=True,
    help="YAML file to load before starting.",
)
def up_cmd(data: Path) -> None:
    """Start everything for a demo: broker, web, bridge, scheduler, simulated agents."""
    from server.adapters.demo.runner import run_demo
    from server.migrate import ForeignKeyViolation, SchemaError

    try:
        code = run_demo(current_app._get_current_object(), data)  # type: ignore[attr-defined]
    except (SchemaError, ForeignKeyViolation) as exc:  # its database, from another Werkbank
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


# -- devices -------------------------------------------------------------------------------
@click.group("device")
def device_group() -> None:
    """Devices: the Raspberry Pis at the machines."""


@device_group.command("provision")
@click.argument("machine")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the bundle (default: ./bundle-<device id>).",
)
@click.option(
    "--mqtt-url",
    default=None,
    help="Broker address the Pi uses (default: MQTT_DEVICE_URL, else MQTT_URL without its user).",
)
@click.option("--reader", type=click.Choice(["mfrc522", "simulated"]), default="mfrc522", show_default=True)
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CA of the broker's TLS certificate, copied into the bundle (default: MQTT_CA_FILE for mqtts).",
)
@with_appcontext
def device_provision_cmd(
    machine: str, out: Path | None, mqtt_url: str | None, reader: str, ca_file: Path | None
) -> None:
    """Give MACHINE's device a new MQTT password and write its install bundle for the Pi."""
    from server.extensions import db
    from server.services.provisioning import ProvisioningError, provision_device

    cfg = current_app.config
    url = mqtt_url or cfg["MQTT_DEVICE_URL"] or cfg["MQTT_URL"]
    if not url:
        raise click.ClickException(
            "say which broker the Pi uses: --mqtt-url mqtts://HOST:8883 (or set MQTT_DEVICE_URL)"
        )
    if ca_file is None and cfg["MQTT_CA_FILE"] and url.startswith(("mqtts://", "ssl://")):
        ca_file = Path(cfg["MQTT_CA_FILE"])
    try:
        with db.session() as session:
            bundle = provision_device(
                session,
                machine,
                out,
                url,
                reader=reader,
                ca_file=ca_file,
                actor="cli",
            )
    except ProvisioningError as exc:
        raise click.ClickException(f"{exc}. Nothing was changed.") from exc
    what = (
        "new device"
        if bundle.created_device
        else ("password rotated" if bundle.rotated else "first password")
    )
    click.echo(f"{bundle.device_id} ({what}) for machine {bundle.machine}, broker {bundle.mqtt_url}")
    click.echo(f"bundle in {bundle.directory}: {', '.join(bundle.files)}")
    click.echo(f"next: follow {bundle.directory / 'INSTALL.md'} (it holds secrets: copy it over SSH only)")


# -- API tokens ----------------------------------------------------------------------------
@device_group.command("entrance")
@click.argument("device_id")
@click.argument("site")
def device_entrance_cmd(device_id: str, site: str) -> None:
    """Register DEVICE_ID as the entrance reader of SITE (its taps check people in and out).

    The Pi runs the agent with `[reader] mode = "checkin"`; its broker account is made like a
    machine's (docs/deploy.md). A device that served a machine stops serving it."""
    from sqlalchemy import select

    from server.extensions import db
    from server.models import Device, Site

    with db.session() as session:
        found = session.scalar(select(Site).where(Site.slug == site))
        if found is None:
            raise click.ClickException(f"no site {site!r}")
        device = session.get(Device, device_id) or Device(id=device_id)
        device.machine_id = None
        device.entrance_site_id = found.id
        session.add(device)
    click.echo(f'{device_id} is the entrance reader of {found.name}; set [reader] mode = "checkin" on it')


@click.group("token")
def token_group() -> None:
    """Tokens for the JSON API (/api/v1): each acts as its person, with that person's rights."""


@token_group.command("create")
@click.option("--email", required=True, help="The person the token acts as.")
@click.option("--name", required=True, help='What the token is for, e.g. "reporting".')
@click.option("--expires-days", type=click.IntRange(min=1), default=None, help="Expire after N days.")
@with_appcontext
def token_create_cmd(email: str, name: str, expires_days: int | None) -> None:
    """Create a token and print it once (only its SHA-256 is stored)."""
    from server.extensions import db
    from server.models import utcnow
    from server.services import tokens

    try:
        with db.session() as session:
            token, secret = tokens.create(session, email, name, utcnow(), expires_days=expires_days)
            owner = token.person.name
            expires = token.expires_at.isoformat() if token.expires_at else "never"
    except tokens.TokenError as exc:
        raise click.ClickException(f"{exc}. No token was created.") from exc
    click.echo(secret)
    click.echo(f"token {secret[: tokens.PREFIX_LENGTH]} for {owner} ({name}), expires {expires}", err=True)
    click.echo("store it now: it is shown only this once", err=True)


@token_group.command("revoke")
@click.argument("prefix")
@with_appcontext
def token_revoke_cmd(prefix: str) -> None:
    """Revoke the token whose prefix (as `werkbank token list` shows it) is PREFIX."""
    from server.extensions import db
    from server.models import utcnow
    from server.services import tokens

    try:
        with db.session() as session:
            token = tokens.revoke(session, prefix, utcnow())
            click.echo(f"revoked {token.prefix} ({token.name}) of {token.person.name}")
    except tokens.TokenError as exc:
        raise click.ClickException(f"{exc}. Nothing was changed.") from exc


@token_group.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked tokens.")
@with_appcontext
def token_list_cmd(include_revoked: bool) -> None:
    """List tokens: prefix, person, name, created, last used, expiry."""
    from server.extensions import db
    from server.services import tokens

    def day(value: Any) -> str:
        return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"

    with db.session() as session:
        rows = tokens.listing(session, include_revoked=include_revoked)
        if not rows:
            click.echo("no tokens")
        for t in rows:
            state = f"revoked {day(t.revoked_at)}" if t.revoked_at else f"expires {day(t.expires_at)}"
            click.echo(
                f"{t.prefix}  {t.person.email or t.person.name}  {t.name!r}  created {day(t.created_at)}"
                f"  last used {day(t.last_used_at)}  {state}"
            )


# -- usage aggregates and demo data (docs/dashboards-data.md) ---------------------------------
@click.group("usage")
def usage_group() -> None:
    """Usage aggregates behind the dashboards and reports."""


@usage_group.command("rebuild")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="First local day to recompute (YYYY-MM-DD); default: each machine's first record.",
)
@with_appcontext
def usage_rebuild_cmd(since: Any) -> None:
    """Recompute every machine's daily, hourly and monthly aggregates and its total machine
    hours from the raw data."""
    from server.extensions import db
    from server.services import usage

    with click.progressbar(length=1, label="recomputing machine-months") as bar:

        def step(n: int) -> None:
            bar.update(n)

        days = usage.rebuild(db, since=since.date() if since else None, progress=step)
    click.echo(f"recomputed {days} machine-days")


@click.command("demo-data")
@click.option("--sites", type=click.IntRange(1, 50), default=5, show_default=True)
@click.option(
    "--machines", type=click.IntRange(1, 1000), default=100, show_default=True, help="In all sites."
)
@click.option(
    "--years",
    type=click.FloatRange(0.01, 20),
    default=5.0,
    show_default=True,
    help="History up to yesterday.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="The same seed gives the same data.")
@click.option("--database-url", default=None, help="Database to fill (default: the app's DATABASE_URL).")
@with_appcontext
def demo_data_cmd(sites: int, machines: int, years: float, seed: int, database_url: str | None) -> None:
    """Fill an empty database with years of realistic history (sessions, jobs, bookings,
    qualifications, downtime) and its usage aggregates. Refuses a database with people in it."""
    from datetime import UTC, datetime

    from sqlalchemy import func, select

    from server.adapters.demo.history import ADMIN_EMAIL, ADMIN_PASSWORD, generate
    from server.db import make_engine, normalise_url
    from server.migrate import upgrade
    from server.models import Person

    if machines < sites:
        raise click.BadParameter("at least one machine per site", param_hint="--machines")
    url = normalise_url(database_url or current_app.config["DATABASE_URL"])
    upgrade(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            people = conn.execute(select(func.count(Person.id))).scalar_one()
        if people:
            raise click.ClickException(
                f"the database already has {people} people: demo-data fills only an empty database "
                "(use a new SQLite file or an empty PostgreSQL database). Nothing was changed."
            )
        with click.progressbar(
            length=machines, label=f"generating {years:g} years for {machines} machines"
        ) as bar:
            summary = generate(engine, sites, machines, years, seed, datetime.now(UTC), progress=bar.update)
    finally:
        engine.dispose()
    counts = ", ".join(f"{n} {table}" for table, n in sorted(summary.rows.items()))
    click.echo(
        f"{summary.sites} sites, {summary.machines} machines, {summary.people} people, "
        f"{summary.sessions} sessions in {summary.seconds:.1f} s ({counts})"
    )
    click.echo(f"log in as {ADMIN_EMAIL} / {ADMIN_PASSWORD}")


COMMANDS = (
    db_group,
    backup_cmd,
    backup_key_cmd,
    certificate_key_cmd,
    restore_cmd,
    load_cmd,
    web_cmd,
    bridge_cmd,
    scheduler_cmd,
    tap_cmd,
    up_cmd,
    device_group,
    token_group,
    usage_group,
    demo_data_cmd,
)


def register(app: Flask) -> None:
    """Put the commands on ``app.cli`` (so ``werkbank`` and Flask's test runner both see them)."""
    for command in COMMANDS:
        app.cli.add_command(command)
