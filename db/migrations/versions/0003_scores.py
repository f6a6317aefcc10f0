"""Kept scores per record and version; flags keep the hash of the text they scored and
hold record ids of any length; the id cursor goes.

Incremental scoring finds its work by what a version has not scored yet (or scored for
another text), so the cursor over ids is no longer used.

Flags written before this revision have no text hash: `anomdet_flagged` hides them
until the next `anomdet score`, which scores every unlabelled record once for the
champion (it has no kept scores yet) and writes them again with their hash.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

VIEW = 'anomdet_flagged'


def _view_sql(conn: sa.Connection) -> tuple[str | None, list[str]]:
    """The view's CREATE statement and the GRANTs on it, if the view exists."""
    if conn.dialect.name == 'sqlite':
        sql = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE type = 'view' "
                                   "AND name = :name"), {'name': VIEW}).scalar()
        return sql, []
    oid = conn.execute(sa.text('SELECT to_regclass(:name)'), {'name': VIEW}).scalar()
    if oid is None:
        return None, []
    body = conn.execute(sa.text('SELECT pg_get_viewdef(to_regclass(:name), true)'),
                        {'name': VIEW}).scalar()
    grants = conn.execute(sa.text(
        "SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN 'PUBLIC' "
        "ELSE quote_ident(pg_get_userbyid(a.grantee)) END, a.is_grantable "
        "FROM pg_class c, aclexplode(c.relacl) a "
        "WHERE c.oid = to_regclass(:name) AND a.grantee <> c.relowner"), {'name': VIEW}).all()
    return f'CREATE VIEW {VIEW} AS {body}', [
        f"GRANT {privilege} ON {VIEW} TO {grantee}" + (' WITH GRANT OPTION' if grantable else '')
        for privilege, grantee, grantable in grants
    ]


@contextmanager
def _view_set_aside() -> Iterator[None]:
    """Drop anomdet_flagged while anomdet_flags changes shape, then put it back as it was,
    grants included: neither database lets a column a view reads change its type. A view
    of the user's own built on it makes the drop fail, and the whole upgrade with it."""
    conn = op.get_bind()
    create, grants = _view_sql(conn)
    if create is not None:
        op.execute(f'DROP VIEW {VIEW}')
    yield
    if create is not None:
        op.execute(create)
        for grant in grants:
            op.execute(grant)


def upgrade() -> None:
    op.create_table('anomdet_scores',
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('record_id', sa.Text(), nullable=False),
    sa.Column('score', sa.Double(), nullable=True),
    sa.Column('text_hash', sa.String(length=64), nullable=True),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('scored_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['anomdet_model_versions.id'], ),
    sa.ForeignKeyConstraint(['run_id'], ['anomdet_runs.id'], ),
    sa.PrimaryKeyConstraint('model_version_id', 'record_id')
    )
    with _view_set_aside(), op.batch_alter_table('anomdet_flags') as batch:
        batch.alter_column('record_id', existing_type=sa.String(length=255), type_=sa.Text(),
                           existing_nullable=False)
        batch.add_column(sa.Column('text_hash', sa.String(length=64), nullable=True))
    op.drop_table('anomdet_scoring_cursors')


def downgrade() -> None:
    op.create_table('anomdet_scoring_cursors',
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('last_record_id', sa.JSON(), nullable=True),
    sa.Column('scored', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['anomdet_model_versions.id'], ),
    sa.PrimaryKeyConstraint('model_version_id')
    )
    # The view reads text_hash now; the older code creates its own view again.
    op.execute(f'DROP VIEW IF EXISTS {VIEW}')
    with op.batch_alter_table('anomdet_flags') as batch:
        batch.drop_column('text_hash')
        batch.alter_column('record_id', existing_type=sa.Text(), type_=sa.String(length=255),
                           existing_nullable=False)
    op.drop_table('anomdet_scores')
