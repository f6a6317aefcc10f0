"""The whole transactions that the command line calls, on SQLite and PostgreSQL."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from db import service
from db.engine import get_engine, migrate, session_scope
from db.models import ModelVersion
from db.records import ensure_records_table
from tests.configs import records_mapping


def _version(number: int, status: str) -> ModelVersion:
    return ModelVersion(model_name="anomdet", version=number, status=status,
                        base_model="tiny-random", artifact_uri="-", weights_sha256="-",
                        data_fingerprint="-", hyperparameters={}, metrics={}, threshold=0.5)


@pytest.fixture
def engine(db_url: str) -> sa.Engine:
    engine = get_engine(db_url)
    migrate(engine)
    return engine


def test_flags_of_no_champion_need_no_view(engine: sa.Engine) -> None:
    assert service.champion_flags(engine, "anomdet", records_mapping(), 5) == (None, [])


def test_a_missing_flagged_view_says_why(engine: sa.Engine) -> None:
    mapping = records_mapping()
    with session_scope(engine) as session:
        session.add(_version(1, "champion"))
    # A champion but no view: its records table is gone...
    with pytest.raises(service.FlaggedViewMissing) as gone:
        service.champion_flags(engine, "anomdet", mapping, 5)
    assert "records table 'records' does not exist" in str(gone.value.reason)
    # ... or it is there, and the view was never made.
    ensure_records_table(engine, mapping)
    with pytest.raises(service.FlaggedViewMissing) as never:
        service.champion_flags(engine, "anomdet", mapping, 5)
    assert never.value.reason is None


def test_a_rollback_names_the_champion_it_replaced(engine: sa.Engine) -> None:
    with session_scope(engine) as session:
        session.add_all([_version(1, "retired"), _version(2, "champion")])
    checked: list[int] = []
    done = service.roll_back(engine, "anomdet", 1, "the new one misses anomalies",
                             verify=lambda v: checked.append(v.version))
    assert (done.version, done.previous_version, checked) == (1, 2, [1])
    champion, runs = service.champion_and_runs(engine, "anomdet", 5)
    assert champion.version == 1 and [r.id for r in runs] == [done.run_id]
    assert service.count_runs(engine, "anomdet") == 1
    versions, quality = service.versions_and_quality(engine, "anomdet", records_mapping())
    assert [(v.version, v.status) for v in versions] == [(2, "retired"), (1, "champion")]
    assert quality == {}  # no records table to review


def test_seeding_writes_into_an_empty_table_only(engine: sa.Engine) -> None:
    mapping = records_mapping()
    table = ensure_records_table(engine, mapping)
    frame = pd.DataFrame({"id": [1, 2], "text": ["a", "b"], "label": [0, None]})
    assert service.seed_if_empty(engine, table, mapping, lambda: frame) is frame
    assert service.seed_if_empty(engine, table, mapping, lambda: frame.iloc[:0]) is None
    assert service.write_records(engine, table, mapping, frame.assign(text=["c", "d"])) == 2
    with engine.connect() as conn:
        assert conn.execute(sa.select(table.c.text).order_by(table.c.id)).scalars().all() \
            == ["c", "d"]
