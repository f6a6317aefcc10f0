"""The scale benchmark's parts on a small table: the records it makes are the ones asked
for, the flip it times really makes the backfilled candidate champion, the view's reads
return its flags, and a bad size is one error line. (A whole run takes minutes: the
README's figures come from `anomdet bench-scale`.)"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from bench import scale
from db import repository as repo
from db.engine import get_engine, migrate, session_scope
from db.models import ModelVersion
from db.records import iter_unlabelled, reflect_records_table
from db.repository import ensure_flagged_view
from tests.configs import records_mapping

RECORDS = records_mapping(table="records")


def test_sizes_are_checked() -> None:
    assert scale._sizes("1000, 2_000") == (1000, 2000)
    for bad in ("many", "500", ""):
        with pytest.raises(ValueError, match="--rows"):
            scale._sizes(bad)


def test_a_bad_size_is_one_error_line() -> None:
    app = typer.Typer()
    app.command()(scale.bench_scale_command)
    outcome = CliRunner().invoke(app, ["--rows", "2000", "--labelled", "3000"])
    assert outcome.exit_code == 1
    assert "error:" in outcome.output and "--labelled" in outcome.output


def _version(session: object, status: str) -> int:
    version = ModelVersion(model_name="anomdet", version=1 if status == "champion" else 2,
                           status=status, base_model="tiny-random", artifact_uri="-",
                           weights_sha256="-", data_fingerprint="-", hyperparameters={},
                           metrics={}, threshold=0.5)
    session.add(version)
    session.flush()
    return version.id


@pytest.mark.postgres
def test_fill_flip_new_records_and_reads_on_postgres(postgres_url: str) -> None:
    scale._fill(postgres_url, 2500, 300, seed=7)
    engine = get_engine(postgres_url)
    migrate(engine)
    with engine.connect() as conn:
        labels = dict(conn.execute(sa.text(
            "SELECT label IS NOT NULL, count(*) FROM records GROUP BY 1")).all())
    assert labels == {True: 300, False: 2200}
    with session_scope(engine) as session:
        champion, candidate = _version(session, "champion"), _version(session, "candidate")
    with engine.connect() as conn:
        table = reflect_records_table(conn, RECORDS)
        chunk = next(iter_unlabelled(conn, table, RECORDS, chunk_size=5000))
    rows = [repo.ScoreRow(k, 0.9 if n % 4 == 0 else 0.1, h)
            for n, (k, h) in enumerate(zip(chunk["key"], chunk["text_hash"], strict=True))]
    with session_scope(engine) as session:
        repo.write_scores(session=session, model_version_id=candidate, rows=rows,
                          threshold=0.5)
    with engine.begin() as conn:
        ensure_flagged_view(conn, reflect_records_table(conn, RECORDS), RECORDS)
    assert scale._flip_ms(postgres_url, candidate, champion, repeats=3) > 0
    with session_scope(engine) as session:
        assert repo.get_champion(session=session, model_name="anomdet").id == candidate
        assert session.get(ModelVersion, champion).status == "retired"
    assert scale._add_new_records(postgres_url, 2500) == 25
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM records WHERE id < 0")).scalar() == 12
    reads = scale._reads(postgres_url, repeats=2)
    assert reads["top10_ms"] > 0 and reads["by_id_ms"] > 0
    with engine.connect() as conn:
        shown = conn.execute(sa.text("SELECT count(*) FROM anomdet_flagged")).scalar()
    assert shown == sum(1 for r in rows if r.score >= 0.5)
