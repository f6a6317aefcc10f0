"""Create the anomdet tables: model versions, runs, flags and scoring cursors.

Revision ID: 0001
Revises: 
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('anomdet_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_name', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('flow_run_id', sa.String(length=64), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('parameters', sa.JSON(), nullable=True),
    sa.Column('data_fingerprint', sa.String(length=64), nullable=True),
    sa.Column('validation', sa.JSON(), nullable=True),
    sa.Column('drift', sa.JSON(), nullable=True),
    sa.Column('test_rows', sa.Integer(), nullable=True),
    sa.Column('champion_version_id', sa.Integer(), nullable=True),
    sa.Column('challenger_version_id', sa.Integer(), nullable=True),
    sa.Column('challenger_metrics', sa.JSON(), nullable=True),
    sa.Column('champion_metrics', sa.JSON(), nullable=True),
    sa.Column('decision', sa.String(length=32), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.CheckConstraint("decision IS NULL OR decision IN ('promoted', 'rejected', 'failed_validation', 'failed', 'rolled_back')", name='ck_anomdet_runs_decision'),
    sa.CheckConstraint("state IN ('running', 'completed', 'failed')", name='ck_anomdet_runs_state'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('anomdet_model_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_name', sa.String(length=100), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('base_model', sa.String(length=500), nullable=False),
    sa.Column('artifact_uri', sa.String(length=1000), nullable=False),
    sa.Column('weights_sha256', sa.String(length=64), nullable=False),
    sa.Column('data_fingerprint', sa.String(length=64), nullable=False),
    sa.Column('hyperparameters', sa.JSON(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('threshold', sa.Double(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('promoted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('flow_run_id', sa.String(length=64), nullable=True),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.CheckConstraint("status IN ('candidate', 'champion', 'retired', 'rejected')", name='ck_anomdet_model_versions_status'),
    sa.ForeignKeyConstraint(['run_id'], ['anomdet_runs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('model_name', 'version', name='uq_anomdet_model_versions_version')
    )
    with op.batch_alter_table('anomdet_model_versions', schema=None) as batch_op:
        batch_op.create_index('uq_anomdet_model_versions_one_champion', ['model_name'], unique=True, sqlite_where=sa.text("status = 'champion'"), postgresql_where=sa.text("status = 'champion'"))

    op.create_table('anomdet_flags',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('record_id', sa.String(length=255), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('score', sa.Double(), nullable=False),
    sa.Column('threshold', sa.Double(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('flagged_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['anomdet_model_versions.id'], ),
    sa.ForeignKeyConstraint(['run_id'], ['anomdet_runs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('record_id', 'model_version_id', name='uq_anomdet_flags_record_version')
    )
    with op.batch_alter_table('anomdet_flags', schema=None) as batch_op:
        batch_op.create_index('ix_anomdet_flags_model_version_id', ['model_version_id'], unique=False)

    op.create_table('anomdet_scoring_cursors',
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('last_record_id', sa.JSON(), nullable=True),
    sa.Column('scored', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['anomdet_model_versions.id'], ),
    sa.PrimaryKeyConstraint('model_version_id')
    )


def downgrade() -> None:
    op.drop_table('anomdet_scoring_cursors')
    with op.batch_alter_table('anomdet_flags', schema=None) as batch_op:
        batch_op.drop_index('ix_anomdet_flags_model_version_id')

    op.drop_table('anomdet_flags')
    with op.batch_alter_table('anomdet_model_versions', schema=None) as batch_op:
        batch_op.drop_index('uq_anomdet_model_versions_one_champion', sqlite_where=sa.text("status = 'champion'"), postgresql_where=sa.text("status = 'champion'"))

    op.drop_table('anomdet_model_versions')
    op.drop_table('anomdet_runs')
