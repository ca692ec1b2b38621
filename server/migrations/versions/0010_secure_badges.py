"""Secure badges: a site's card rule and master key, a badge's kind, a machine's card key slot,
enrolment stations and badge enrolments.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 00:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('sites', schema=None) as batch_op:
        batch_op.add_column(sa.Column('card_security', sa.Enum('uid', 'secure', 'secure_required', name='cardsecurity', native_enum=False, length=32), server_default='uid', nullable=False))
        batch_op.add_column(sa.Column('card_master_key', sa.String(length=32), nullable=True))
    with op.batch_alter_table('badges', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.Enum('uid', 'secure', name='badgekind', native_enum=False, length=32), server_default='uid', nullable=False))
    with op.batch_alter_table('machines', schema=None) as batch_op:
        batch_op.add_column(sa.Column('card_key_slot', sa.Integer(), server_default='1', nullable=False))
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('enrolment_station', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table('badge_enrolments',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('person_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.String(length=40), nullable=False),
    sa.Column('status', sa.Enum('pending', 'done', 'cancelled', name='enrolmentstatus', native_enum=False, length=32), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('uid', sa.String(length=20), nullable=True),
    sa.Column('completed_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['created_by_id'], ['people.id'], name=op.f('fk_badge_enrolments_created_by_id_people')),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], name=op.f('fk_badge_enrolments_device_id_devices')),
    sa.ForeignKeyConstraint(['person_id'], ['people.id'], name=op.f('fk_badge_enrolments_person_id_people')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_badge_enrolments'))
    )
    with op.batch_alter_table('badge_enrolments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_badge_enrolments_device_id'), ['device_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_badge_enrolments_person_id'), ['person_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('badge_enrolments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_badge_enrolments_person_id'))
        batch_op.drop_index(batch_op.f('ix_badge_enrolments_device_id'))
    op.drop_table('badge_enrolments')
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_column('enrolment_station')
    with op.batch_alter_table('machines', schema=None) as batch_op:
        batch_op.drop_column('card_key_slot')
    with op.batch_alter_table('badges', schema=None) as batch_op:
        batch_op.drop_column('kind')
    with op.batch_alter_table('sites', schema=None) as batch_op:
        batch_op.drop_column('card_master_key')
        batch_op.drop_column('card_security')
