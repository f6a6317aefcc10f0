"""The scoring flow: incremental, idempotent, skips records without text."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from db import repository as repo
from db.engine import get_engine, session_scope
from tests.flows.test_retrain import seed_records, toy_records

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _flags(url: str) -> list[tuple]:
    with get_engine(url).connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT record_id, model_version_id FROM anomdet_flags ORDER BY record_id"))]


def test_scoring_new_records_is_incremental_and_idempotent(anomdet_env: str) -> None:
    from flows.retrain import retrain
    from flows.score import score

    seed_records(anomdet_env, toy_records(400))
    assert retrain()["decision"] == "promoted"
    flags_after_promotion = _flags(anomdet_env)
    nothing_new = score()
    assert nothing_new["scored"] == 0 and _flags(anomdet_env) == flags_after_promotion

    extra = toy_records(600, seed=3).iloc[400:].assign(label=pd.NA)
    extra.loc[extra.index[:3], "text"] = [None, "   ", ""]
    seed_records(anomdet_env, extra.astype({"label": "Int64"}))
    first = score()
    assert first["scored"] == 197 and first["skipped"] == 3
    assert set(first["skipped_example_ids"]) == {str(i) for i in extra["id"][:3]}
    after_first = _flags(anomdet_env)
    assert len(after_first) == len(flags_after_promotion) + first["flagged"]
    skipped = {str(i) for i in extra["id"][:3]}
    assert not skipped & {rid for rid, _ in after_first}

    again = score()
    assert again["scored"] == 0 and _flags(anomdet_env) == after_first


def test_scoring_without_champion_says_so(anomdet_env: str) -> None:
    from flows.score import score

    seed_records(anomdet_env, toy_records(200))
    with pytest.raises(ValueError, match="no champion"):
        score()
    with session_scope(get_engine(anomdet_env)) as session:
        assert repo.count_flags(session=session) == 0
