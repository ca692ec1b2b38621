"""The shipped alert rules and Grafana dashboard (deploy/monitoring/): well-formed, asking for metrics
the web exports, and alerting on device health at the thresholds the admins' notices use.

The stack test (test_stack.py) checks every metric name against the live processes; this one runs
without nginx or a browser, on the web's metrics from a lab database.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import yaml
from prometheus_client import generate_latest
from sqlalchemy import select

from server.db import Database
from server.metrics import web_registry
from server.models import Device
from server.services.devices import ALLOWLIST_NOTICE_AFTER_S, OUTBOX_NOTICE_AFTER_S
from tests.deploy.mosquitto_layout import DEPLOY

ALERTS = DEPLOY / "monitoring" / "werkbank-alerts.yaml"
DASHBOARD = DEPLOY / "monitoring" / "grafana-werkbank.json"


def _rules() -> dict[str, dict[str, object]]:
    (group,) = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for rule in group["rules"]}


def test_monitoring_alert_rules_are_complete() -> None:
    rules = _rules()
    for name, rule in rules.items():
        assert rule["expr"] and rule["labels"]["severity"] in {"critical", "warning", "info"}, name  # type: ignore[index]
        assert rule["annotations"]["summary"], name  # type: ignore[index]


def test_monitoring_device_health_alerts_use_the_notices_thresholds() -> None:
    rules = _rules()
    stuck = str(rules["WerkbankDeviceEventsStuck"]["expr"])
    old = str(rules["WerkbankDeviceAllowlistOld"]["expr"])
    assert "werkbank_device_outbox_oldest_seconds" in stuck and stuck.endswith(
        f"> {OUTBOX_NOTICE_AFTER_S:.0f}"
    )
    assert "werkbank_device_allowlist_age_seconds" in old and old.endswith(
        f"> {ALLOWLIST_NOTICE_AFTER_S:.0f}"
    )


def test_monitoring_dashboard_panels_are_distinct_and_do_not_overlap() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & mine, panel["title"]
        cells |= mine
        assert all(t["expr"] for t in panel["targets"]), panel["title"]


def test_monitoring_device_metrics_asked_for_are_the_ones_the_web_exports(lab: Database) -> None:
    with lab.session() as s:
        device = s.scalar(select(Device).where(Device.id == "pi-printer-1"))
        assert device is not None
        device.online, device.health_reported_at = True, datetime.now(UTC)
        device.outbox_depth, device.outbox_oldest_s, device.allowlist_age_s = 1, 5.0, 60.0
    exported = generate_latest(web_registry(lab)).decode()
    asked = set(re.findall(r"werkbank_device_[a-z_]+", ALERTS.read_text() + DASHBOARD.read_text()))
    assert asked == {
        "werkbank_device_outbox_events",
        "werkbank_device_outbox_oldest_seconds",
        "werkbank_device_allowlist_age_seconds",
    }
    for name in sorted(asked):
        assert f'{name}{{device="pi-printer-1",machine="printer-1"}}' in exported, name
