"""Runs record the TF-IDF + logistic-regression baseline's test metrics.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('anomdet_runs') as batch:
        batch.add_column(sa.Column('baseline_metrics', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('anomdet_runs') as batch:
        batch.drop_column('baseline_metrics')
