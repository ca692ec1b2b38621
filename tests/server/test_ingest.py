"""Ingestion is one transaction: the event's ledger row and what it changes commit together."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from server.db import Database
from server.models import Device, MachineSession, StoredEvent
from server.services.ingest import ingest_event
from werkbank_protocol import format_ts
from werkbank_protocol.messages import SessionStarted


def test_ingest_rolled_back_event_leaves_no_ledger_row(lab: Database, clock) -> None:  # type: ignore[no-untyped-def]
    """If the caller's transaction fails after ingestion (a crash, a later error), the event
    must not count as stored: the agent re-sends it and it is applied then. A ledger row
    committed on its own would turn that re-send into a "duplicate" and lose the event."""
    event = SessionStarted(
        v=1, id=str(uuid.uuid4()), ts=format_ts(clock()), session=str(uuid.uuid4()), badge="04A224B2C35E80"
    )
    with lab.session() as s:
        device = s.get(Device, "pi-printer-1")
        assert device is not None
        assert ingest_event(s, device, event).new
        s.rollback()
    with lab.session() as s:
        assert s.get(StoredEvent, event.id) is None
        assert s.scalars(select(MachineSession)).all() == []
        device = s.get(Device, "pi-printer-1")
        assert device is not None
        assert ingest_event(s, device, event).new, "the re-sent event is applied"
        s.commit()
    with lab.session() as s:
        assert s.get(StoredEvent, event.id) is not None
        assert s.get(MachineSession, event.session) is not None
