"""The utilisation dashboard's heatmap from an index alone.

``ix_usage_hourly_site_day_hour`` (site, day, hour, unlocked time) replaces
``ix_usage_hourly_site_day`` (site, day): it serves every query that one did, and the
weekday-by-hour heatmap (unlocked seconds summed per day and hour of a site's period) reads it
in order without visiting the table: on PostgreSQL an index-only scan feeding a streaming
aggregate instead of a bitmap heap scan and a hash aggregate (one site's year of the bench
data, 57,000 hourly rows: about 25 ms → 15 ms). Unlocked time now being an indexed column,
updating it writes the index entry too; an hourly row changes only when a session of that hour
is recorded.

The index takes a few seconds per million hourly rows to build, during which new sessions wait.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07 13:00:00.000000
"""

from collections.abc import Sequence

from alembic import op


revision: str = '0025'
down_revision: str | None = '0024'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_usage_hourly_site_day_hour', 'usage_hourly', ['site_id', 'day', 'hour', 'unlocked_s'])
    op.drop_index('ix_usage_hourly_site_day', table_name='usage_hourly')


def downgrade() -> None:
    op.create_index('ix_usage_hourly_site_day', 'usage_hourly', ['site_id', 'day'])
    op.drop_index('ix_usage_hourly_site_day_hour', table_name='usage_hourly')
