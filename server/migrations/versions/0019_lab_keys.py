"""The lab's own keys: the certificates' Ed25519 signing key and the pseudonyms' HMAC key.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 07:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0019'
down_revision: str | None = '0018'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'lab_keys',
        sa.Column('name', sa.String(length=40), nullable=False),
        sa.Column('secret', sa.Text(), nullable=False),
        sa.Column('public', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade() -> None:
    op.drop_table('lab_keys')
