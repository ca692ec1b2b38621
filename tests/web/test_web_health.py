"""/healthz and /readyz: what a load balancer or monitor asks (docs/deploy.md, "Watching it").

/readyz is ready only with the database, the broker, a bridge that hears the broker and the
scheduler; the bridge and the scheduler report through heartbeat rows, so a real bridge on a real
broker is started here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from flask import Flask
from sqlalchemy import select

from server.adapters.bridge import Bridge, wait_until
from server.adapters.scheduler import JobRuns, heartbeat
from server.broker import free_port
from server.extensions import db
from server.models import Device
from server.services.health import STALE_S
from tests.web.conftest import Lab


def _ready(app: Flask) -> tuple[int, dict[str, object]]:
    response = app.test_client().get("/readyz")
    return response.status_code, response.get_json()


def test_readyz_names_what_is_missing(make_app: Callable[..., Flask]) -> None:
    app = make_app(MQTT_URL=f"mqtt://127.0.0.1:{free_port()}")  # nothing listens there
    assert app.test_client().get("/healthz").get_json() == {"status": "ok"}
    status, body = _ready(app)
    assert status == 503
    assert body["checks"] == {"database": True, "broker": False, "bridge": False, "scheduler": False}


def test_readyz_is_ready_with_a_running_bridge_and_scheduler_and_not_once_they_fall_silent(
    make_app: Callable[..., Flask], mqtt_url: str
) -> None:
    app = make_app(MQTT_URL=mqtt_url)
    bridge = Bridge(db, mqtt_url, client_id="werkbank-bridge-ready").start()
    try:
        assert bridge.connected.is_set()
        status, body = _ready(app)
        assert (status, body["checks"]["scheduler"]) == (503, False)  # the bridge alone is not enough
        heartbeat(db, JobRuns())
        assert wait_until(lambda: _ready(app)[0] == 200, 5), _ready(app)
    finally:
        bridge.stop()
    # Both beat for the last time now: a minute later they count as gone.
    later = datetime.now(UTC) + timedelta(seconds=STALE_S + 1)
    from server.services.health import readiness

    with db.session() as session:
        result = readiness(session, mqtt_url, now=later)
    assert result["checks"] == {"database": True, "broker": True, "bridge": False, "scheduler": False}


def test_readyz_lists_a_job_whose_last_run_failed(make_app: Callable[..., Flask], mqtt_url: str) -> None:
    app = make_app(MQTT_URL=mqtt_url)
    runs = JobRuns()
    when = datetime.now(UTC)
    runs.record(JobExecutionEvent(EVENT_JOB_EXECUTED, "refresh_usage", "default", when))
    runs.record(
        JobExecutionEvent(
            EVENT_JOB_ERROR, "remind_bookings", "default", when, exception=RuntimeError("SMTP down")
        )
    )
    heartbeat(db, runs)
    _status, body = _ready(app)
    assert body["failed_jobs"] == ["remind_bookings"]
    assert body["checks"]["scheduler"] is True


def test_metrics_count_the_devices_online_the_same_from_any_worker(
    make_app: Callable[..., Flask], lab: Lab
) -> None:
    with db.session() as s:
        devices = list(s.scalars(select(Device).where(Device.machine_id.is_not(None)).order_by(Device.id)))
        for device in devices:
            device.online = False
        devices[0].online = True
        total = len(devices)
    # Two apps stand for two gunicorn workers: both read the database, so both say the same.
    for app in (make_app(), make_app()):
        response = app.test_client().get("/metrics")
        assert response.status_code == 200
        assert response.content_type.startswith("text/plain")
        text = response.get_data(as_text=True)
        assert "werkbank_devices_online 1.0" in text, text
        assert f"werkbank_devices {float(total)}" in text, text


def test_metrics_show_each_online_devices_outbox_and_allowlist_as_it_last_reported(
    make_app: Callable[..., Flask], lab: Lab
) -> None:
    now = datetime.now(UTC)
    with db.session() as s:
        rows = {d.id: d for d in s.scalars(select(Device))}
        for device in rows.values():
            device.online = False
        printer, laser = rows["pi-prusa-a"], rows["pi-laser-1"]
        printer.online, printer.health_reported_at = True, now
        printer.outbox_depth, printer.outbox_oldest_s, printer.allowlist_age_s = 4, 725.5, 90_000.0
        laser.online, laser.health_reported_at = True, now
        laser.outbox_depth, laser.outbox_oldest_s, laser.allowlist_age_s = 0, None, None  # no list yet
        gone = rows["pi-prusa-b"]  # offline: what it said last is old news
        gone.health_reported_at, gone.outbox_depth, gone.outbox_oldest_s = now, 9, 9999.0
    text = make_app().test_client().get("/metrics").get_data(as_text=True)
    found = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("werkbank_device_")
    }
    assert found == {
        'werkbank_device_outbox_events{device="pi-laser-1",machine="laser-1"}': 0.0,
        'werkbank_device_outbox_events{device="pi-prusa-a",machine="prusa-a"}': 4.0,
        'werkbank_device_outbox_oldest_seconds{device="pi-laser-1",machine="laser-1"}': 0.0,
        'werkbank_device_outbox_oldest_seconds{device="pi-prusa-a",machine="prusa-a"}': 725.5,
        'werkbank_device_allowlist_age_seconds{device="pi-prusa-a",machine="prusa-a"}': 90_000.0,
    }
