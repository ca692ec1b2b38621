"""Device health: the outbox and allow-list figures agents report in `status`, and the notice episodes.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-12 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('outbox_depth', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('outbox_oldest_s', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('allowlist_age_s', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('health_reported_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('outbox_stuck_since', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('allowlist_old_since', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_column('allowlist_old_since')
        batch_op.drop_column('outbox_stuck_since')
        batch_op.drop_column('health_reported_at')
        batch_op.drop_column('allowlist_age_s')
        batch_op.drop_column('outbox_oldest_s')
        batch_op.drop_column('outbox_depth')
