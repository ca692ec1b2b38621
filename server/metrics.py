"""Prometheus metrics (docs/deploy.md, "Metrics").

Each process serves what it knows itself: the bridge its decisions, latencies and ingested or
rejected messages, the scheduler its job runs (each on its own loopback port), the web what the
database says (devices online), so several gunicorn workers need no shared state: any worker
reads the same rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from server.db import Database
from server.models import Device, Machine, ProcessHeartbeat

if TYPE_CHECKING:
    from server.adapters.bridge import Bridge
    from server.adapters.scheduler import JobRuns

# Taps are answered in a few ms; the agent gives up after about 1.5 s.
DECISION_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5)


class BridgeMetrics:
    """The bridge's registry: its counters read at scrape time, and the decision latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decision_seconds = Histogram(
            "werkbank_decision_seconds",
            "Time from a tap request's dequeue to its answer being published.",
            buckets=DECISION_BUCKETS,
            registry=self.registry,
        )

    def watch(self, bridge: Bridge) -> None:
        self.registry.register(_BridgeCollector(bridge))


class _BridgeCollector(Collector):
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def describe(self) -> Iterator[Any]:
        # Registered while the bridge is still being built: do not collect yet.
        return iter(())

    def collect(self) -> Iterator[Any]:
        decisions = CounterMetricFamily(
            "werkbank_decisions", "Tap decisions answered, by reason (ok = allowed).", labels=["reason"]
        )
        handled = CounterMetricFamily(
            "werkbank_messages_handled", "Device messages handled, by kind.", labels=["kind"]
        )
        rejected = CounterMetricFamily(
            "werkbank_messages_rejected",
            "Device messages refused, by reason.",
            labels=["reason"],
        )
        # This process's counters, plus those of the other half of a split bridge (its ingest
        # half reports them every second: server/adapters/bridge_processes.py).
        own, peer = self.bridge.counters(), self.bridge.peer
        for family, key in ((decisions, "decisions"), (handled, "handled"), (rejected, "rejected")):
            total = Counter(own[key])
            theirs = peer.get(key)
            if isinstance(theirs, dict):
                total.update({str(k): v for k, v in theirs.items() if isinstance(v, int | float)})
            for label, value in sorted(total.items()):
                family.add_metric([label], value)

        def both(key: str) -> float:
            theirs = peer.get(key, 0)
            return float(own[key]) + (float(theirs) if isinstance(theirs, int | float) else 0.0)

        connected = GaugeMetricFamily(
            "werkbank_bridge_connected", "1 while the bridge (both halves of a split one) hears the broker."
        )
        connected.add_metric([], 1.0 if own["connected"] and peer.get("connected", True) else 0.0)
        received = CounterMetricFamily(
            "werkbank_telemetry_received", "Telemetry messages taken in (written a window later)."
        )
        received.add_metric([], both("telemetry_received"))
        dropped = CounterMetricFamily(
            "werkbank_telemetry_dropped",
            "Telemetry messages dropped unread, by reason (busy: the bridge's buffer was full).",
            labels=["reason"],
        )
        dropped.add_metric(["busy"], both("telemetry_dropped"))
        waiting = GaugeMetricFamily(
            "werkbank_telemetry_waiting", "Telemetry messages waiting for their window."
        )
        waiting.add_metric([], both("telemetry_waiting"))
        deferred = CounterMetricFamily(
            "werkbank_telemetry_deferred",
            "Devices' telemetry states put off to the next window: another transaction held their rows.",
        )
        deferred.add_metric([], both("telemetry_deferred"))
        yield from (decisions, handled, rejected, connected, received, dropped, waiting, deferred)


class _SchedulerCollector(Collector):
    def __init__(self, runs: JobRuns) -> None:
        self.runs = runs

    def collect(self) -> Iterator[Any]:
        total = CounterMetricFamily("werkbank_job_runs", "Scheduler job runs, by job.", labels=["job"])
        failed = CounterMetricFamily("werkbank_job_failures", "Failed job runs.", labels=["job"])
        for job, count in sorted(self.runs.counts.items()):
            total.add_metric([job], count)
            failed.add_metric([job], self.runs.failures.get(job, 0))
        yield from (total, failed)


def scheduler_registry(runs: JobRuns) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_SchedulerCollector(runs))
    return registry


class _DatabaseCollector(Collector):
    """What the database knows, the same from every gunicorn worker."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def collect(self) -> Iterator[Any]:
        online = GaugeMetricFamily("werkbank_devices_online", "Devices that are online.")
        known = GaugeMetricFamily("werkbank_devices", "Devices serving a machine.")
        beats = GaugeMetricFamily(
            "werkbank_heartbeat_age_seconds",
            "Seconds since a process last beat.",
            labels=["name"],
        )
        labels = ["device", "machine"]
        depth = GaugeMetricFamily(
            "werkbank_device_outbox_events",
            "Events waiting in an online device's outbox for the server's ack, as it last reported.",
            labels=labels,
        )
        oldest = GaugeMetricFamily(
            "werkbank_device_outbox_oldest_seconds",
            "How long the oldest of them has waited (device's boot clock; 0 when none waits).",
            labels=labels,
        )
        allowlist = GaugeMetricFamily(
            "werkbank_device_allowlist_age_seconds",
            "Age of an online device's offline allow-list (since its issue), as it last reported.",
            labels=labels,
        )
        now = datetime.now(UTC)
        with self.database.session() as session:
            serving = Device.machine_id.is_not(None)
            online.add_metric(
                [], session.scalar(select(func.count()).where(serving, Device.online.is_(True))) or 0
            )
            known.add_metric([], session.scalar(select(func.count()).where(serving)) or 0)
            for name, seen_at in session.execute(select(ProcessHeartbeat.name, ProcessHeartbeat.seen_at)):
                beats.add_metric([name], (now - seen_at).total_seconds())
            # Online devices only: an offline device's last report is old news, and
            # werkbank_devices_online already says it is gone.
            health = session.execute(
                select(
                    Device.id,
                    Machine.slug,
                    Device.outbox_depth,
                    Device.outbox_oldest_s,
                    Device.allowlist_age_s,
                )
                .outerjoin(Machine, Machine.id == Device.machine_id)
                .where(Device.online.is_(True), Device.health_reported_at.is_not(None))
                .order_by(Device.id)
            )
            for device_id, slug, waiting, oldest_s, age_s in health:
                values = [device_id, slug or ""]
                if waiting is not None:
                    depth.add_metric(values, waiting)
                    oldest.add_metric(values, oldest_s or 0.0)
                if age_s is not None:
                    allowlist.add_metric(values, age_s)
        yield from (online, known, beats, depth, oldest, allowlist)


def web_registry(database: Database) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DatabaseCollector(database))
    return registry


def serve(registry: CollectorRegistry, port: int) -> None:
    """Serve ``registry`` on 127.0.0.1:``port`` (a scrape from the host only; a daemon thread)."""
    start_http_server(port, addr="127.0.0.1", registry=registry)
