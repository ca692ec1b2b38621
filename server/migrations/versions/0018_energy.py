"""Energy per session from telemetry, and per machine and day in the usage aggregates.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 05:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0018'
down_revision: str | None = '0017'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('energy_wh', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('energy_gap_s', sa.Float(), server_default=sa.text('0'), nullable=False))
        batch_op.add_column(sa.Column('energy_source', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('energy_last_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('energy_last_w', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('energy_last_wh', sa.Float(), nullable=True))
    with op.batch_alter_table('usage_daily', schema=None) as batch_op:
        batch_op.add_column(sa.Column('energy_wh', sa.Float(), server_default=sa.text('0'), nullable=False))
        batch_op.add_column(sa.Column('energy_gap_s', sa.Float(), server_default=sa.text('0'), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('usage_daily', schema=None) as batch_op:
        batch_op.drop_column('energy_gap_s')
        batch_op.drop_column('energy_wh')
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_column('energy_last_wh')
        batch_op.drop_column('energy_last_w')
        batch_op.drop_column('energy_last_at')
        batch_op.drop_column('energy_source')
        batch_op.drop_column('energy_gap_s')
        batch_op.drop_column('energy_wh')
