"""The retraining flow end to end under a temporary Prefect API: what it writes on SQLite
and PostgreSQL; what it decides before writing (validation, split, baseline) on SQLite."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from anomdet.errors import DataValidationError
from db import repository as repo
from db.engine import get_engine, session_scope
from db.records import ensure_records_table, upsert_records
from tests.configs import records_mapping
from tests.databases import only_on

pytestmark = pytest.mark.usefixtures("prefect_harness")


def toy_records(n: int = 500, seed: int = 0) -> pd.DataFrame:
    """Separable toy records: 60% labelled, about 15% anomalous."""
    rng = np.random.default_rng(seed)
    normal = ["user {} signed in from the office", "nightly report {} exported",
              "payment {} settled on time", "cache {} refreshed"]
    odd = ["user {} signed in from an unknown country at 3am",
           "payment {} reversed twice by the bank"]
    is_odd = rng.random(n) < 0.15
    texts = [(odd if y else normal)[rng.integers(2 if y else 4)].format(i)
             for i, y in enumerate(is_odd)]
    labels = pd.array([int(y) if rng.random() < 0.6 else None for y in is_odd], dtype="Int64")
    return pd.DataFrame({"id": np.arange(1, n + 1), "text": texts, "label": labels})


def seed_records(url: str, frame: pd.DataFrame) -> None:
    engine = get_engine(url)
    mapping = records_mapping()
    table = ensure_records_table(engine, mapping)
    with engine.begin() as conn:
        upsert_records(conn, table, mapping, frame)


def snapshot(url: str) -> dict:
    """What a run may change: versions, champion, flags, records."""
    engine = get_engine(url)
    with session_scope(engine) as session:
        champion = repo.get_champion(session=session, model_name="anomdet")
        versions = [(v.version, v.status) for v in
                    repo.list_versions(session=session, model_name="anomdet")]
        flags = session.execute(sa.text(
            "SELECT record_id, model_version_id, score FROM anomdet_flags ORDER BY id")).all()
        records = session.execute(sa.text("SELECT count(*) FROM records")).scalar_one()
    return {"champion": champion.id if champion else None, "versions": versions,
            "flags": [tuple(r) for r in flags], "records": records}


def test_first_run_promotes_and_flags(anomdet_env: str) -> None:
    from flows.retrain import retrain

    seed_records(anomdet_env, toy_records())
    outcome = retrain()
    assert outcome.decision == "promoted", outcome.reason
    assert outcome.champion is None and outcome.promoted_version == 1
    engine = get_engine(anomdet_env)
    with session_scope(engine) as session:
        champion = repo.get_champion(session=session, model_name="anomdet")
        [run] = repo.recent_runs(session=session, model_name="anomdet")
        flagged = repo.flagged_rows(session=session, limit=1000)
    assert champion.version == 1 and Path(champion.artifact_uri).is_dir()
    assert run.decision == "promoted" and run.state == "completed"
    assert run.challenger_metrics["f1"] == pytest.approx(outcome.challenger["f1"])
    assert run.validation["success"] is True
    # ANOMDET_VALIDATION__DATA_DOCS=false (tests/conftest.py): no HTML was built; the
    # Data Docs test in tests/test_bad_input_ops.py turns them on.
    assert not (Path(os.environ["ANOMDET_ARTIFACTS_DIR"]) / "validation").exists()
    assert len(flagged) == outcome.flags_written > 0
    # Flags are unlabelled records only, each with its text from the records table.
    records = toy_records().set_index("id")
    for row in flagged:
        rid = int(row["record_id"])
        assert pd.isna(records.loc[rid, "label"])
        assert row["text"] == records.loc[rid, "text"]
        assert row["score"] >= row["threshold"]


def test_losing_challenger_leaves_champion_and_flags_untouched(
    anomdet_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.retrain import retrain

    seed_records(anomdet_env, toy_records())
    assert retrain().decision == "promoted"
    before = snapshot(anomdet_env)
    # One epoch at a learning rate far too small: a challenger that cannot win.
    monkeypatch.setenv("ANOMDET_TRAINING__LEARNING_RATE", "0.0000001")
    outcome = retrain(epochs=1, seed=5)
    assert outcome.decision == "rejected"
    assert outcome.champion is not None, "both models must be evaluated"
    assert snapshot(anomdet_env) == before
    with session_scope(get_engine(anomdet_env)) as session:
        latest = repo.recent_runs(session=session, model_name="anomdet")[0]
    assert latest.decision == "rejected" and latest.reason
    assert latest.champion_metrics is not None and latest.test_rows > 0


@only_on("sqlite")
def test_invalid_data_stops_before_training(anomdet_env: str) -> None:
    from flows.retrain import retrain

    frame = toy_records()
    frame.loc[frame["label"].notna(), "label"] = 0  # one class only
    seed_records(anomdet_env, frame)
    with pytest.raises(DataValidationError):
        retrain()
    snap = snapshot(anomdet_env)
    assert snap["champion"] is None and snap["versions"] == [] and snap["flags"] == []
    with session_scope(get_engine(anomdet_env)) as session:
        [run] = repo.recent_runs(session=session, model_name="anomdet")
    assert run.decision == "failed_validation" and run.state == "failed"
    assert run.validation["success"] is False


@only_on("sqlite")
def test_run_seed_leaves_the_split_alone(anomdet_env: str) -> None:
    """Each run may train with its own seed, but records keep their side of the split:
    otherwise the champion would be scored on texts it was trained on."""
    from flows.retrain import RetrainParams, effective_settings
    from tasks.model import split_data

    frame = toy_records().dropna(subset=["label"])
    splits = [split_data.fn(frame, effective_settings(RetrainParams(seed=s))) for s in (1, 2)]
    assert sorted(splits[0].test["id"]) == sorted(splits[1].test["id"])
    assert sorted(splits[0].train["id"]) == sorted(splits[1].train["id"])
    moved = effective_settings(RetrainParams()).model_copy(deep=True)
    moved.training.split_seed += 1
    assert sorted(split_data.fn(frame, moved).test["id"]) != sorted(splits[0].test["id"])


@only_on("sqlite")
def test_every_run_records_the_baseline_and_the_first_run_is_judged_against_it(
        anomdet_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.retrain import retrain

    monkeypatch.setenv("ANOMDET_PROMOTION__FIRST_RUN", "beat_baseline")
    seed_records(anomdet_env, toy_records())
    outcome = retrain()
    baseline, challenger = outcome.baseline, outcome.challenger
    # Same test split: the same examples and anomalies behind both figures.
    assert baseline["n"] == challenger["n"] and baseline["positives"] == challenger["positives"]
    checks = {name: passed for name, passed, _ in outcome.checks}
    with session_scope(get_engine(anomdet_env)) as session:
        [run] = repo.recent_runs(session=session, model_name="anomdet")
    paired = run.details["baseline_bootstrap"]
    # Refused only when the baseline is better beyond noise: the interval wholly below 0.
    assert checks["baseline"] == (challenger["f1"] >= baseline["f1"] or paired["ci_high"] >= 0)
    detail = dict((name, d) for name, _, d in outcome.checks)["baseline"]
    assert f"[{paired['ci_low']:+.4f}, {paired['ci_high']:+.4f}]" in detail
    assert (outcome.decision == "promoted") == checks["first_run"]
    assert run.baseline_metrics["f1"] == pytest.approx(baseline["f1"])
    if outcome.decision == "rejected":
        assert "ANOMDET_PROMOTION__FIRST_RUN=always" in run.reason


@only_on("sqlite")
def test_a_first_challenger_far_below_the_baseline_is_refused_with_what_to_do(
        anomdet_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.retrain import retrain

    # A random head that barely moves (learning rate 1e-12): the baseline is better beyond
    # noise.
    monkeypatch.setenv("ANOMDET_PROMOTION__FIRST_RUN", "beat_baseline")
    monkeypatch.setenv("ANOMDET_TRAINING__LEARNING_RATE", "1e-12")
    seed_records(anomdet_env, toy_records())
    outcome = retrain()
    assert outcome.decision == "rejected" and outcome.promoted_version is None
    with session_scope(get_engine(anomdet_env)) as session:
        [run] = repo.recent_runs(session=session, model_name="anomdet")
        assert repo.get_champion(session=session, model_name="anomdet") is None
    assert run.details["baseline_bootstrap"]["ci_high"] < 0
    assert "better beyond noise" in run.reason and "--epochs" in run.reason
