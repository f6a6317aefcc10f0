"""Flags are indexed by score: `anomdet_flagged`'s top rows are read from the index.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_anomdet_flags_score', 'anomdet_flags', ['score'])


def downgrade() -> None:
    op.drop_index('ix_anomdet_flags_score', table_name='anomdet_flags')
