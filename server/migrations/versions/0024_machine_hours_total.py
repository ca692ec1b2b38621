"""Each machine's total machine hours as a running total, kept at ingestion.

``machines.hours_total_s`` holds the sum of ``sessions.unlocked_s`` of the machine's sessions,
so the overview (and ``/live.json``, which an open overview polls every 3 s) reads one column per
machine instead of summing every session the machine ever had. A flush hook keeps it in the
transaction of each change (``server.services.hours_total``); this migration fills it from
the sessions there are, in one statement (a few seconds per million sessions on PostgreSQL).

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0024'
down_revision: str | None = '0023'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('machines', schema=None) as batch_op:
        batch_op.add_column(sa.Column('hours_total_s', sa.Float(), server_default=sa.text('0'), nullable=False))
    op.execute(
        'UPDATE machines SET hours_total_s = '
        '(SELECT coalesce(sum(s.unlocked_s), 0) FROM sessions s WHERE s.machine_id = machines.id)'
    )


def downgrade() -> None:
    with op.batch_alter_table('machines', schema=None) as batch_op:
        batch_op.drop_column('hours_total_s')
