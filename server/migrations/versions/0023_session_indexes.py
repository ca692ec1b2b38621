"""Indexes for the overview: a machine's newest sessions, and machine hours from the index alone.

``ix_sessions_machine_hours`` (machine, start, unlocked time) replaces
``ix_sessions_machine_started`` (machine, start): it serves every query that one did, and
machine hours (the sum of unlocked time) read it without visiting the table.
``ix_sessions_machine_newest`` orders a machine's sessions as "newest first" does
(``coalesce(started_at, ended_at, created_at)``), so the overview's newest sessions of a site
no longer sort every session the site ever had.

On PostgreSQL the table is analysed afterwards (the new expression's statistics), and each
index takes a few seconds per million sessions to build, during which new
sessions wait.

Revision ID: 0023
Revises: 0018
Create Date: 2026-12-07 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0023'
down_revision: str | None = '0019'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEWEST = sa.text('coalesce(started_at, ended_at, created_at)')


def upgrade() -> None:
    op.create_index('ix_sessions_machine_hours', 'sessions', ['machine_id', 'started_at', 'unlocked_s'])
    op.drop_index('ix_sessions_machine_started', table_name='sessions')
    op.create_index('ix_sessions_machine_newest', 'sessions', ['machine_id', NEWEST])
    if op.get_bind().dialect.name == 'postgresql':
        # PostgreSQL keeps statistics of an indexed expression only from the next ANALYZE; until
        # then it guesses that a third of all sessions are newer than any time asked for, and
        # reads the whole table for the overview instead of the index.
        op.execute('ANALYZE sessions')


def downgrade() -> None:
    op.drop_index('ix_sessions_machine_newest', table_name='sessions')
    op.create_index('ix_sessions_machine_started', 'sessions', ['machine_id', 'started_at'])
    op.drop_index('ix_sessions_machine_hours', table_name='sessions')
