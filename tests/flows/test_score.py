"""The scoring flow: incremental, idempotent, skips records without text."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from db import repository as repo
from db.engine import get_engine, session_scope
from tests.databases import only_on
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
    assert retrain().decision == "promoted"
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
    summary = score()  # an expected state, not a failure
    assert summary["scored"] == 0 and "no champion yet" in summary["message"]
    with session_scope(get_engine(anomdet_env)) as session:
        assert repo.count_flags(session=session) == 0


@pytest.mark.long
@only_on("postgresql")
def test_dask_runner_writes_exactly_the_default_runners_flags(anomdet_env: str) -> None:
    from flows.retrain import retrain
    from flows.score import score, with_task_runner

    seed_records(anomdet_env, toy_records(300))
    assert retrain().decision == "promoted"
    extra = toy_records(700, seed=5).iloc[300:].assign(label=pd.NA).astype({"label": "Int64"})
    seed_records(anomdet_env, extra)
    engine = get_engine(anomdet_env)
    default = score(chunks=3)
    by_default = _flag_scores(anomdet_env)
    with engine.begin() as conn:  # forget what the default run did, then score again on Dask
        conn.execute(sa.text("DELETE FROM anomdet_flags WHERE run_id IS NULL"))
        conn.execute(sa.text("DELETE FROM anomdet_scores WHERE run_id IS NULL"))
    on_dask = with_task_runner(score, "dask", workers=2)(chunks=3)
    assert on_dask["scored"] == default["scored"] == 400
    assert on_dask["flagged"] == default["flagged"]
    by_dask = _flag_scores(anomdet_env)
    assert by_dask.keys() == by_default.keys()
    for key, value in by_default.items():
        assert by_dask[key] == pytest.approx(value, abs=1e-6)


def _flag_scores(url: str) -> dict[str, float]:
    with get_engine(url).connect() as conn:
        return {r[0]: r[1] for r in conn.execute(sa.text(
            "SELECT record_id, score FROM anomdet_flags WHERE run_id IS NULL"))}


def test_a_scoring_run_retires_the_flag_of_an_edited_text(anomdet_env: str) -> None:
    from flows.retrain import retrain
    from flows.score import score

    seed_records(anomdet_env, toy_records(400))
    assert retrain().decision == "promoted"
    engine = get_engine(anomdet_env)
    with engine.connect() as conn:
        key, old_score = conn.execute(sa.text(
            "SELECT record_id, score FROM anomdet_flagged ORDER BY score DESC")).first()
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE records SET text = 'an entirely new text' "
                             "WHERE CAST(id AS TEXT) = :k"), {"k": key})
    rescored = score()
    assert rescored["scored"] == 1
    with engine.connect() as conn:
        shown = conn.execute(sa.text("SELECT text, score FROM anomdet_flagged "
                                     "WHERE record_id = :k"), {"k": key}).all()
        kept = conn.execute(sa.text("SELECT score FROM anomdet_scores "
                                    "WHERE record_id = :k"), {"k": key}).scalar_one()
    # Flagged again only for the new text, with the new text's score; else not at all.
    assert shown in ([], [("an entirely new text", pytest.approx(kept))])
    assert kept != pytest.approx(old_score)
