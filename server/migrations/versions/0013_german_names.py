"""German names of training steps and sites (pages name them to German readers).

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("training_steps", "sites"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("name_de", sa.String(length=200), nullable=True))


def downgrade() -> None:
    for table in ("sites", "training_steps"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("name_de")
