"""When things break: device clock offsets, time-corrected events and sessions, flagged offline
sessions, and the decision of a session found by its id.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 00:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('clock_offset_s', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('clock_measured_at', sa.DateTime(), nullable=True))

    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('time_corrected', sa.Boolean(), nullable=False, server_default=sa.false())
        )

    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('time_corrected', sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column('flag', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('flag_reason', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_sessions_flag'), ['flag'], unique=False)

    with op.batch_alter_table('access_decisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_access_decisions_session_id'), ['session_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('access_decisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_access_decisions_session_id'))

    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sessions_flag'))
        batch_op.drop_column('flag_reason')
        batch_op.drop_column('flag')
        batch_op.drop_column('time_corrected')

    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_column('time_corrected')

    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_column('clock_measured_at')
        batch_op.drop_column('clock_offset_s')
