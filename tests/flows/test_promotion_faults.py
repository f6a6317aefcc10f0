"""Promotion is one unit: a failure at any step, a concurrent run, or a killed process
leaves the champion, the versions and the flags exactly as they were."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from anomdet.checkpoint import CHECKPOINTS
from db import repository as repo
from db.engine import get_engine, session_scope
from tests.flows.conftest import free_retrain_slot, retrain_at_once, retrain_slots
from tests.flows.test_retrain import seed_records, snapshot, toy_records

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parents[2]


def _artifacts(root: Path) -> set[str]:
    """The model's stored versions (not the challenger kept for a retry, nor the lock)."""
    folder = root / "anomdet"
    return {p.name for p in folder.glob("*") if p.name != CHECKPOINTS
            and not p.name.startswith(".")} if folder.exists() else set()


@pytest.fixture
def weak_champion(anomdet_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A deliberately weak champion (barely trained), so that a normal challenger wins."""
    from flows.retrain import RetrainParams, retrain

    seed_records(anomdet_env, toy_records(400))
    monkeypatch.setenv("ANOMDET_PROMOTION__FIRST_RUN", "always")
    monkeypatch.setenv("ANOMDET_TRAINING__LEARNING_RATE", "0.0000001")
    assert retrain(RetrainParams(epochs=1)).decision == "promoted"
    monkeypatch.setenv("ANOMDET_TRAINING__LEARNING_RATE", "0.001")
    monkeypatch.delenv("ANOMDET_PROMOTION__FIRST_RUN")
    return tmp_path / "artifacts"


def _fail_after(original, what: str):  # noqa: ANN001, ANN202
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        original(*args, **kwargs)
        raise RuntimeError(f"injected failure after {what}")
    return wrapper


def _half_the_flags(original):  # noqa: ANN001, ANN202
    def wrapper(*, session, model_version_id, rows, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if rows:
            original(session=session, model_version_id=model_version_id,
                     rows=rows[: len(rows) // 2], **kwargs)
            raise RuntimeError("injected failure after half the flags were written")
        return 0
    return wrapper


FAULTS = {
    "artifact saved": ("anomdet.scoring.score_all", lambda orig: _fail_after(orig, "save")),
    "champion moved": ("db.repository._retire_expected_champion",
                       lambda orig: _fail_after(orig, "the champion moved")),
    "version inserted": ("db.repository.insert_flags",
                         lambda orig: _fail_after(lambda **_: None, "the version insert")),
    "half the flags written": ("db.repository.insert_flags", _half_the_flags),
    "scores kept": ("db.repository.write_scores",
                    lambda orig: _fail_after(orig, "the scores were kept")),
}


@pytest.mark.parametrize("step", list(FAULTS))
def test_a_failure_at_any_step_leaves_no_trace(
    step: str, weak_champion: Path, anomdet_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.retrain import retrain

    before, artifacts = snapshot(anomdet_env), _artifacts(weak_champion)
    target, make = FAULTS[step]
    module_name, attr = target.rsplit(".", 1)
    module = sys.modules[module_name] if module_name in sys.modules else __import__(
        module_name, fromlist=[attr])
    monkeypatch.setattr(module, attr, make(getattr(module, attr)))
    if step == "artifact saved":  # the task module holds its own reference
        import tasks.promotion

        monkeypatch.setattr(tasks.promotion, "score_all", getattr(module, attr))
    with pytest.raises(RuntimeError, match="injected failure"):
        retrain()
    assert snapshot(anomdet_env) == before
    assert _artifacts(weak_champion) == artifacts, "the rollback hook must remove the artifact"
    with session_scope(get_engine(anomdet_env)) as session:
        latest = repo.recent_runs(session=session, model_name="anomdet")[0]
    assert (latest.state, latest.decision) == ("failed", "failed")
    assert "injected failure" in latest.reason
    monkeypatch.undo()


def test_without_faults_the_same_challenger_is_promoted(
    weak_champion: Path, anomdet_env: str
) -> None:
    """The control for the fault tests: the challenger really would have won."""
    from flows.retrain import retrain

    outcome = retrain()
    assert outcome.decision == "promoted", outcome.reason
    assert len(_artifacts(weak_champion)) == 2


def test_two_runs_racing_to_promote_end_with_one_champion(
    anomdet_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both runs evaluate against 'no champion'; a barrier makes both reach the promotion
    at once. The database lets exactly one through; the other records why it did not."""

    seed_records(anomdet_env, toy_records(300))
    barrier = threading.Barrier(2, timeout=900)  # generous: CI machines are shared
    original = repo.promote_new_version

    def both_at_once(**kwargs):  # noqa: ANN003, ANN202
        barrier.wait()
        return original(**kwargs)

    monkeypatch.setattr(repo, "promote_new_version", both_at_once)
    # Two slots, as a user may allow, so that the runs race rather than take turns.
    retrain_slots(2)
    outcomes = retrain_at_once(1, 2, timeout=1200)
    assert sorted(o.decision for o in outcomes) == ["promoted", "rejected"]
    loser = next(o for o in outcomes if o.decision == "rejected")
    assert "Promotion abandoned" in loser.reason
    engine = get_engine(anomdet_env)
    with session_scope(engine) as session:
        versions = repo.list_versions(session=session, model_name="anomdet")
        assert [v.status for v in versions] == ["champion"]
        duplicates = session.execute(sa.text(
            "SELECT record_id, model_version_id, count(*) FROM anomdet_flags "
            "GROUP BY record_id, model_version_id HAVING count(*) > 1")).all()
    assert duplicates == []


def _cli_env(anomdet_env: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return env


# A kill during training on SQLite, and during the write on PostgreSQL: the database's
# own transaction is what the write relies on, and the faults above cover both.
@pytest.mark.parametrize(("db_url", "moment"), [
    ("sqlite", "training"),
    pytest.param("postgresql", "write", marks=pytest.mark.postgres),
], indirect=["db_url"])
def test_sigkill_leaves_champion_and_flags_and_the_next_run_completes(
    moment: str, anomdet_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.retrain import retrain

    seed_records(anomdet_env, toy_records(300))
    # A barely trained champion, so that the killed run has a winner to write flags for.
    monkeypatch.setenv("ANOMDET_TRAINING__LEARNING_RATE", "0.0000001")
    assert retrain().decision == "promoted"
    monkeypatch.setenv("ANOMDET_TRAINING__LEARNING_RATE", "0.001")
    # More records: labelled ones make training last, unlabelled ones the scoring and write.
    extra = toy_records(2500, seed=9).iloc[300:]
    if moment == "write":
        extra = extra.assign(label=pd.array([None] * len(extra), dtype="Int64"))
    seed_records(anomdet_env, extra)
    before, artifacts_root = snapshot(anomdet_env), tmp_path / "artifacts"
    known = _artifacts(artifacts_root)
    env = _cli_env(anomdet_env) | {"ANOMDET_PROMOTION__FIRST_RUN": "always",
                                   "ANOMDET_PROMOTION__BOOTSTRAP_RESAMPLES": "0",
                                   "ANOMDET_PROMOTION__MIN_ABSOLUTE_IMPROVEMENT": "0",
                                   "ANOMDET_TRAINING__EPOCHS": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "anomdet.cli", "retrain"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_moment(moment, anomdet_env, artifacts_root, known, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    free_retrain_slot()
    after = snapshot(anomdet_env)
    assert after == before
    outcome = retrain()
    with session_scope(get_engine(anomdet_env)) as session:
        killed = repo.recent_runs(session=session, model_name="anomdet")[1]
    assert killed.state == "failed" and killed.reason.startswith("abandoned: process")
    assert outcome.decision in ("promoted", "rejected")
    with session_scope(get_engine(anomdet_env)) as session:
        assert len([v for v in repo.list_versions(session=session, model_name="anomdet")
                    if v.status == "champion"]) == 1


def _wait_for_moment(moment: str, url: str, artifacts: Path, known: set[str],
                     proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        if moment == "training" and _running_runs(url) and _fine_tuning_started(url):
            time.sleep(1.0)
            return
        if moment == "write" and _artifacts(artifacts) - known:
            return  # the artifact is stored: scoring and the database write come next
        time.sleep(0.1)
    pytest.fail(f"the run never reached {moment}")


def _running_runs(url: str) -> int:
    with get_engine(url).connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT count(*) FROM anomdet_runs WHERE state = 'running'")).scalar_one())


def _fine_tuning_started(url: str) -> bool:
    with get_engine(url).connect() as conn:
        return bool(conn.execute(sa.text(
            "SELECT count(*) FROM anomdet_runs WHERE state = 'running' AND test_rows IS NOT NULL"
        )).scalar_one())
