"""Flags whose record's text changed since scoring are marked, so views need no hash.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('anomdet_flags') as batch:
        batch.add_column(sa.Column('text_changed_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('anomdet_flags') as batch:
        batch.drop_column('text_changed_at')
