"""German name of a machine type (machine messages name it).

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("machine_types") as batch:
        batch.add_column(sa.Column("name_de", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("machine_types") as batch:
        batch.drop_column("name_de")
