"""The machine-hours invariant, checked from the database as it is: each machine's running total
(``machines.hours_total_s``) equals the sum of its sessions' unlocked time."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.models import Machine, MachineSession


def hours_by_machine(s: Session) -> dict[str, tuple[float, float]]:
    """slug -> (the machine's total, the sum over its sessions), read afresh."""
    summed = (
        select(func.coalesce(func.sum(MachineSession.unlocked_s), 0.0))
        .where(MachineSession.machine_id == Machine.id)
        .scalar_subquery()
    )
    rows = s.execute(
        select(Machine.slug, Machine.hours_total_s, summed).execution_options(populate_existing=True)
    )
    return {slug: (float(total), float(sessions)) for slug, total, sessions in rows}


def assert_totals_match(s: Session) -> dict[str, float]:
    """Assert the invariant for every machine; returns each machine's total (slug -> seconds)."""
    found = hours_by_machine(s)
    assert found, "no machines"
    for slug, (total, sessions) in found.items():
        assert total == pytest.approx(sessions, rel=1e-9, abs=1e-6), slug
    return {slug: total for slug, (total, _sessions) in found.items()}
