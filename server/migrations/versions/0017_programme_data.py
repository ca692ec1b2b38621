"""Programme data: field kinds, options and consent dependence, versioned consent texts, who
recorded a value or a consent and who withdrew it.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-12 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('consent_texts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('programme', sa.String(length=100), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('text_de', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['created_by_id'], ['people.id'], name=op.f('fk_consent_texts_created_by_id_people')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consent_texts')),
    sa.UniqueConstraint('programme', 'version', name=op.f('uq_consent_texts_programme'))
    )
    with op.batch_alter_table('programme_fields', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.Enum('text', 'date', 'choice', 'yes_no', name='fieldkind', native_enum=False, length=32), server_default='text', nullable=False))
        batch_op.add_column(sa.Column('options', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('needs_consent', sa.Boolean(), server_default=sa.true(), nullable=False))
    for table in ('participant_values', 'special_values'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('recorded_at', sa.DateTime(), nullable=True))
            batch_op.add_column(sa.Column('recorded_by_id', sa.Integer(), nullable=True))
            batch_op.create_foreign_key(batch_op.f(f'fk_{table}_recorded_by_id_people'), 'people', ['recorded_by_id'], ['id'])
    with op.batch_alter_table('consents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('consent_text_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('version', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('language', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('recorded_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('withdrawn_by_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_consents_consent_text_id_consent_texts'), 'consent_texts', ['consent_text_id'], ['id'])
        batch_op.create_foreign_key(batch_op.f('fk_consents_withdrawn_by_id_people'), 'people', ['withdrawn_by_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('consents', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_consents_withdrawn_by_id_people'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_consents_consent_text_id_consent_texts'), type_='foreignkey')
        batch_op.drop_column('withdrawn_by_id')
        batch_op.drop_column('recorded_at')
        batch_op.drop_column('language')
        batch_op.drop_column('version')
        batch_op.drop_column('consent_text_id')
    for table in ('special_values', 'participant_values'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(batch_op.f(f'fk_{table}_recorded_by_id_people'), type_='foreignkey')
            batch_op.drop_column('recorded_by_id')
            batch_op.drop_column('recorded_at')
    with op.batch_alter_table('programme_fields', schema=None) as batch_op:
        batch_op.drop_column('needs_consent')
        batch_op.drop_column('options')
        batch_op.drop_column('kind')
    op.drop_table('consent_texts')
