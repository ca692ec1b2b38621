"""Settings, read from the environment (every one is listed in the README)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("WERKBANK_VAR_DIR", ROOT / "var"))


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"Setting {name}={raw!r} must be a whole number") from None


class Config:
    """Production defaults; each attribute can be set by the environment variable of the same name."""

    SECRET_KEY: str = os.environ.get("SECRET_KEY") or secrets.token_hex(32)
    SECRET_KEY_FROM_ENV: bool = "SECRET_KEY" in os.environ
    DATABASE_URL: str = os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'werkbank.db'}"
    # Unset: `werkbank up` starts an embedded broker; the bridge and CLI then need MQTT_URL.
    MQTT_URL: str | None = os.environ.get("MQTT_URL") or None
    MQTT_CLIENT_ID: str = os.environ.get("MQTT_CLIENT_ID", "werkbank-bridge")
    MQTT_SHARED_SUBSCRIPTIONS: bool = _bool("MQTT_SHARED_SUBSCRIPTIONS", False)
    MQTT_CA_FILE: str | None = os.environ.get("MQTT_CA_FILE") or None
    # The broker address the Pis use, for `werkbank device provision`; unset: MQTT_URL (the
    # servers' own address, which on a host install is the loopback listener no Pi reaches).
    MQTT_DEVICE_URL: str | None = os.environ.get("MQTT_DEVICE_URL") or None
    # The broker's largest message (message_size_limit in deploy/mosquitto/werkbank.conf; keep them
    # equal): the bridge does not send an allow-list over it, which the broker would drop unseen.
    MQTT_MESSAGE_LIMIT: int = _int("MQTT_MESSAGE_LIMIT", 1024 * 1024)
    # Offline allow-lists are valid this many days after they are issued.
    ALLOWLIST_DAYS: int = _int("WERKBANK_ALLOWLIST_DAYS", 7)
    # How many machines one person may have unlocked at once.
    MAX_OPEN_SESSIONS: int = _int("WERKBANK_MAX_OPEN_SESSIONS", 2)
    # The bridge drops taps older than this: the agent has decided offline (raise it with the
    # agents' auth_timeout_s). And how long its event statements may wait on a lock (PostgreSQL).
    TAP_MAX_AGE_MS: int = _int("WERKBANK_TAP_MAX_AGE_MS", 1550)
    # Prometheus metrics of the bridge and the scheduler on 127.0.0.1:PORT (0: not served).
    BRIDGE_METRICS_PORT: int = _int("WERKBANK_BRIDGE_METRICS_PORT", 0)
    SCHEDULER_METRICS_PORT: int = _int("WERKBANK_SCHEDULER_METRICS_PORT", 0)
    INGEST_TIMEOUT_S: int = _int("WERKBANK_INGEST_TIMEOUT_S", 5)
    # `werkbank bridge` in one process or two (taps apart from events and telemetry:
    # server/adapters/bridge_processes.py); 0: two on PostgreSQL, one on SQLite (one writer at a
    # time there). And how much lower the second one's CPU priority is (nice, 0-19).
    BRIDGE_PROCESSES: int = _int("WERKBANK_BRIDGE_PROCESSES", 0)
    BRIDGE_INGEST_NICE: int = _int("WERKBANK_BRIDGE_INGEST_NICE", 5)
    BABEL_DEFAULT_LOCALE: str = os.environ.get("WERKBANK_DEFAULT_LANGUAGE", "de")
    BABEL_DEFAULT_TIMEZONE: str = os.environ.get("WERKBANK_TIMEZONE", "Europe/Berlin")
    LANGUAGES: tuple[str, ...] = ("de", "en")
    # E-mail for notifications; unset host: notifications stay in the app only.
    # Erase ended participants' personal data this many months after their last trace (0: never).
    RETENTION_MONTHS: int = _int("WERKBANK_RETENTION_MONTHS", 0)
    SMTP_HOST: str | None = os.environ.get("WERKBANK_SMTP_HOST") or None
    SMTP_PORT: int = _int("WERKBANK_SMTP_PORT", 587)
    SMTP_USER: str | None = os.environ.get("WERKBANK_SMTP_USER") or None
    SMTP_PASSWORD: str | None = os.environ.get("WERKBANK_SMTP_PASSWORD") or None
    SMTP_FROM: str = os.environ.get("WERKBANK_SMTP_FROM") or "werkbank@localhost"
    SMTP_STARTTLS: bool = _bool("WERKBANK_SMTP_STARTTLS", True)
    # Certificates are signed with this key (HMAC-SHA256); unset: a key derived from SECRET_KEY.
    CERTIFICATE_KEY: str | None = os.environ.get("WERKBANK_CERTIFICATE_KEY") or None
    # The address people reach the server at (https://lab.example.org), for the verification URL
    # and QR code printed on certificates; unset: the address of the request that made them.
    PUBLIC_URL: str | None = os.environ.get("WERKBANK_PUBLIC_URL") or None
    # Backups (`werkbank backup`, docs/deploy.md "Backups"): where the sets go, the key they are
    # encrypted with, how many are kept, and files beyond the database a restored server needs
    # (Mosquitto's password file and key; separated by ":").
    BACKUP_DIR: str = os.environ.get("WERKBANK_BACKUP_DIR") or str(VAR_DIR / "backups")
    BACKUP_KEY_FILE: str = os.environ.get("WERKBANK_BACKUP_KEY_FILE") or str(VAR_DIR / "backup.key")
    BACKUP_KEEP: int = _int("WERKBANK_BACKUP_KEEP", 14)
    BACKUP_FILES: str = os.environ.get("WERKBANK_BACKUP_FILES", "")
    WEB_HOST: str = os.environ.get("WERKBANK_HOST", "127.0.0.1")
    WEB_PORT: int = _int("WERKBANK_PORT", 5000)
    # How many reverse proxies (nginx, Caddy) stand in front of the web app: their
    # X-Forwarded-For/-Proto/-Host are trusted that many hops deep (werkzeug's ProxyFix), so the
    # login rate limit sees the real client address and links use https. 0: none, trust nothing.
    PROXY_COUNT: int = _int("WERKBANK_PROXY_COUNT", 0)
    # A web session unused this long ends (0: only logout ends it).
    SESSION_IDLE_MINUTES: int = _int("WERKBANK_SESSION_IDLE_MINUTES", 60)
    # Failed web logins allowed within the window: per address and email, per address across
    # emails (password spraying), per email across addresses. Shared by all workers (database).
    LOGIN_MAX_FAILURES: int = _int("WERKBANK_LOGIN_MAX_FAILURES", 5)
    LOGIN_MAX_FAILURES_PER_ADDRESS: int = _int("WERKBANK_LOGIN_MAX_FAILURES_PER_ADDRESS", 20)
    LOGIN_MAX_FAILURES_PER_EMAIL: int = _int("WERKBANK_LOGIN_MAX_FAILURES_PER_EMAIL", 20)
    LOGIN_WINDOW_MINUTES: int = _int("WERKBANK_LOGIN_WINDOW_MINUTES", 5)
    SESSION_COOKIE_HTTPONLY: bool = True
    SESSION_COOKIE_SAMESITE: str = "Lax"
    SESSION_COOKIE_SECURE: bool = _bool("WERKBANK_SECURE_COOKIES", False)
    REMEMBER_COOKIE_SECURE: bool = SESSION_COOKIE_SECURE
    REMEMBER_COOKIE_HTTPONLY: bool = True
    WTF_CSRF_ENABLED: bool = True
    TESTING: bool = False


class TestConfig(Config):
    TESTING = True
    SECRET_KEY = "test-secret-key"  # noqa: S105 - tests only
    DATABASE_URL = os.environ.get("TEST_DATABASE_URL") or "sqlite://"
    WTF_CSRF_ENABLED = False
    SMTP_HOST = None  # tests that e-mail start their own SMTP server
