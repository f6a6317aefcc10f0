"""Promotion in two phases: a failure at any step, a concurrent run, or a killed process
leaves what users see (the champion, its flags, the view) exactly as it was. A failure
before the candidate is registered leaves no trace at all; one during its backfill or
flip leaves a candidate that nobody sees, and the next run resumes it without training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from anomdet.checkpoint import CHECKPOINTS
from db import repository as repo
from db.engine import get_engine, session_scope
from db.models import ModelVersion
from tests.databases import Database, copy_into, drop_database, new_database, only_on
from tests.flows.conftest import free_retrain_slot, retrain_at_once, retrain_slots
from tests.flows.test_retrain import seed_records, snapshot, toy_records

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parents[2]


def _artifacts(root: Path) -> set[str]:
    """The model's stored versions (not the challenger kept for a retry, nor the lock)."""
    folder = root / "anomdet"
    return {p.name for p in folder.glob("*") if p.name != CHECKPOINTS
            and not p.name.startswith(".")} if folder.exists() else set()


@pytest.fixture(scope="module")
def weak_templates() -> Iterator[dict[str, Database]]:
    """The weak champion's database per backend, trained once for the module."""
    made: dict[str, Database] = {}
    yield made
    for template in made.values():
        drop_database(template)


@pytest.fixture
def weak_champion(anomdet_env: str, weak_templates: dict[str, Database], tmp_path: Path,
                  tmp_path_factory: pytest.TempPathFactory,
                  monkeypatch: pytest.MonkeyPatch) -> Path:
    """A deliberately weak champion (barely trained), so that a normal challenger wins.

    The test's database is a copy of a template; the weak champion's own folder stays in
    the template's artifacts, so the test's artifacts folder starts empty.
    """
    from flows.retrain import retrain

    backend = sa.engine.make_url(anomdet_env).get_backend_name()
    if backend not in weak_templates:
        root = tmp_path_factory.mktemp("weak")
        template = new_database(backend, root)
        with monkeypatch.context() as patch:
            patch.setenv("ANOMDET_DATABASE_URL", template.url)
            patch.setenv("ANOMDET_ARTIFACTS_DIR", str(root / "artifacts"))
            patch.setenv("ANOMDET_TRAINING__LEARNING_RATE", "0.0000001")
            # The encoder alone: the n-gram evidence would learn the toy records by itself.
            patch.setenv("ANOMDET_TRAINING__LEXICAL_EVIDENCE", "false")
            seed_records(template.url, toy_records(400))
            assert retrain(epochs=1).decision == "promoted"
        weak_templates[backend] = template
    copy_into(weak_templates[backend], anomdet_env)
    monkeypatch.delenv("ANOMDET_PROMOTION__FIRST_RUN")
    return tmp_path / "artifacts"


def visible(url: str) -> dict:
    """What users see: the champion, the versions that served, their flags, the view."""
    state = snapshot(url)
    with session_scope(get_engine(url)) as session:
        candidates = {v.id for v in repo.list_versions(session=session, model_name="anomdet")
                      if v.status in ("candidate", "rejected")}
        view = [tuple(sorted(row.items())) for row in repo.flagged_rows(session=session,
                                                                         limit=10_000)]
    return {"champion": state["champion"], "records": state["records"], "view": view,
            "versions": [v for v in state["versions"] if v[1] not in ("candidate", "rejected")],
            "flags": [f for f in state["flags"] if f[1] not in candidates]}


def _pending(url: str) -> list:
    with session_scope(get_engine(url)) as session:
        return [(v.id, v.version) for v in repo.list_versions(session=session,
                                                              model_name="anomdet")
                if v.status == "candidate"]


def _fail_after(original, what: str):  # noqa: ANN001, ANN202
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        original(*args, **kwargs)
        raise RuntimeError(f"injected failure after {what}")
    return wrapper


def _fail_on_call(original, call: int, what: str):  # noqa: ANN001, ANN202
    calls = []

    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == call:
            raise RuntimeError(f"injected failure at {what}")
        return original(*args, **kwargs)
    return wrapper


# step: (what to patch, how, whether the failure leaves a candidate to resume)
FAULTS = {
    "artifact saved": ("db.repository.register_candidate",
                       lambda orig: _fail_on_call(orig, 1, "the candidate's insert"), False),
    "candidate inserted": ("db.repository.register_candidate",
                           lambda orig: _fail_after(orig, "the candidate's insert"), False),
    "first chunk kept": ("db.repository.write_scores",
                         lambda orig: _fail_after(orig, "the first chunk's scores"), True),
    "half the backfill": ("anomdet.scoring.score_rows",
                          lambda orig: _fail_on_call(orig, 3, "the third chunk"), True),
    "champion moved": ("db.repository._retire_expected_champion",
                       lambda orig: _fail_after(orig, "the champion moved"), True),
}


# The steps before the candidate's insert fail fast and run on both databases, as does a
# backfill stopped half-way. A stop after the first chunk runs on SQLite, a failed flip on
# PostgreSQL (the SIGKILL tests below add a kill on each).
_PG = pytest.mark.postgres


@pytest.mark.parametrize(("db_url", "step"), [
    *[pytest.param(db, step, marks=[_PG] if db == "postgresql" else [])
      for step in ("artifact saved", "candidate inserted", "half the backfill")
      for db in ("sqlite", "postgresql")],
    ("sqlite", "first chunk kept"), pytest.param("postgresql", "champion moved", marks=_PG),
], indirect=["db_url"])
def test_a_failure_at_any_step_leaves_what_users_see_and_the_next_run_finishes_it(
    step: str, weak_champion: Path, anomdet_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.retrain import retrain

    monkeypatch.setenv("ANOMDET_SCORING__BACKFILL_CHUNKS", "4")
    before, artifacts = visible(anomdet_env), _artifacts(weak_champion)
    target, make, resumable = FAULTS[step]
    module_name, attr = target.rsplit(".", 1)
    module = sys.modules[module_name] if module_name in sys.modules else __import__(
        module_name, fromlist=[attr])
    original = getattr(module, attr)
    monkeypatch.setattr(module, attr, make(original))
    with pytest.raises(RuntimeError, match="injected failure"):
        retrain()
    monkeypatch.setattr(module, attr, original)
    assert visible(anomdet_env) == before
    with session_scope(get_engine(anomdet_env)) as session:
        latest = repo.recent_runs(session=session, model_name="anomdet")[0]
    assert (latest.state, latest.decision) == ("failed", "failed")
    assert "injected failure" in latest.reason
    pending = _pending(anomdet_env)
    if not resumable:
        assert pending == []
        assert _artifacts(weak_champion) == artifacts, "the rollback must remove the artifact"
        return
    [(candidate_id, number)] = pending
    assert len(_artifacts(weak_champion) - artifacts) == 1

    def no_training(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a resumed promotion trained again")

    monkeypatch.setattr("anomdet.checkpoint.train_challenger", no_training)
    monkeypatch.setenv("ANOMDET_SCORING__BACKFILL_CHUNKS", "4")
    outcome = retrain()
    assert outcome.decision == "promoted", outcome.reason
    assert outcome.promoted_version == number and "resumed" in outcome.reason
    engine = get_engine(anomdet_env)
    with session_scope(engine) as session:
        assert repo.get_champion(session=session, model_name="anomdet").id == candidate_id
        scored = repo.count_scores(session=session, model_version_id=candidate_id)
        flagged = repo.count_flags(session=session, model_version_id=candidate_id)
        unlabelled = session.execute(sa.text(
            "SELECT count(*) FROM records WHERE label IS NULL")).scalar_one()
        above = session.execute(sa.text(
            "SELECT count(*) FROM anomdet_scores s JOIN anomdet_model_versions v "
            "ON v.id = s.model_version_id WHERE v.id = :id AND s.score >= v.threshold"),
            {"id": candidate_id}).scalar_one()
    # Every unlabelled record scored once, whichever run scored it, and flagged by its score.
    assert scored == unlabelled and flagged == above == outcome.flags_written
    assert _pending(anomdet_env) == []


@only_on("sqlite")
def test_a_stale_candidate_is_discarded_and_the_run_trains_its_own(
    weak_champion: Path, anomdet_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.retrain import retrain

    artifacts = _artifacts(weak_champion)
    original = repo.flip_champion
    monkeypatch.setattr(repo, "flip_champion", _fail_on_call(original, 1, "the flip"))
    with pytest.raises(RuntimeError, match="injected failure"):
        retrain()
    monkeypatch.setattr(repo, "flip_champion", original)
    [(stale_id, _)] = _pending(anomdet_env)
    # New labels arrive: the candidate was judged on other data and may not be promoted.
    seed_records(anomdet_env, toy_records(460, seed=11).iloc[400:])
    outcome = retrain()
    assert outcome.decision == "promoted" and "resumed" not in outcome.reason
    with session_scope(get_engine(anomdet_env)) as session:
        stale = session.get(ModelVersion, stale_id)
        assert stale.status == "rejected"
        assert repo.count_scores(session=session, model_version_id=stale_id) == 0
        assert repo.count_flags(session=session, model_version_id=stale_id) == 0
    assert not Path(stale.artifact_uri).exists()
    assert len(_artifacts(weak_champion) - artifacts) == 1, "only the new champion's folder"


def test_without_faults_the_same_challenger_is_promoted(
    weak_champion: Path, anomdet_env: str
) -> None:
    """The control for the fault tests: the challenger really would have won."""
    from flows.retrain import retrain

    outcome = retrain()
    assert outcome.decision == "promoted", outcome.reason
    assert len(_artifacts(weak_champion)) == 1


def test_two_runs_racing_to_promote_end_with_one_champion(
    anomdet_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both runs evaluate against 'no champion'; a barrier makes both reach the flip at
    once. The database lets exactly one through; the other records why it did not and
    discards its candidate."""

    seed_records(anomdet_env, toy_records(300))
    barrier = threading.Barrier(2, timeout=900)  # generous: CI machines are shared
    original = repo.flip_champion

    def both_at_once(**kwargs):  # noqa: ANN003, ANN202
        barrier.wait()
        return original(**kwargs)

    monkeypatch.setattr(repo, "flip_champion", both_at_once)
    # Two slots, as a user may allow, so that the runs race rather than take turns.
    retrain_slots(2)
    outcomes = retrain_at_once(1, 2, timeout=1200, barrier=barrier)
    assert sorted(o.decision for o in outcomes) == ["promoted", "rejected"]
    loser = next(o for o in outcomes if o.decision == "rejected")
    assert "Promotion abandoned" in loser.reason
    engine = get_engine(anomdet_env)
    with session_scope(engine) as session:
        versions = repo.list_versions(session=session, model_name="anomdet")
        assert sorted(v.status for v in versions) == ["champion", "rejected"]
        rejected = next(v for v in versions if v.status == "rejected")
        assert repo.count_flags(session=session, model_version_id=rejected.id) == 0
        duplicates = session.execute(sa.text(
            "SELECT record_id, model_version_id, count(*) FROM anomdet_flags "
            "GROUP BY record_id, model_version_id HAVING count(*) > 1")).all()
    assert duplicates == []


def _cli_env(anomdet_env: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return env


# A kill during training (SQLite; nothing is written then, whatever the database), and a
# kill half-way through the backfill (PostgreSQL), which the next run resumes. A backfill
# stopped half-way on SQLite is resumed in the tests above.
@pytest.mark.parametrize(("db_url", "moment"), [
    ("sqlite", "training"), pytest.param("postgresql", "backfill", marks=pytest.mark.postgres),
], indirect=["db_url"])
@pytest.mark.long
def test_sigkill_leaves_champion_and_flags_and_the_next_run_completes(
    moment: str, anomdet_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.retrain import retrain

    seed_records(anomdet_env, toy_records(300))
    # A barely trained champion, so that the killed run has a winner to write flags for.
    monkeypatch.setenv("ANOMDET_TRAINING__LEARNING_RATE", "0.0000001")
    assert retrain().decision == "promoted"
    monkeypatch.setenv("ANOMDET_TRAINING__LEARNING_RATE", "0.001")
    # The killed run must still be at it when the kill comes: in training, a schedule of
    # thousands of steps (the next run trains at the usual tiny one); in the backfill,
    # more unlabelled records, committed 100 at a time in one range, so that the kill
    # finds it half-way.
    slow: dict[str, str] = {}
    if moment == "training":
        slow = {"ANOMDET_TRAINING__MIN_STEPS": "5000", "ANOMDET_TRAINING__MAX_STEPS": "5000"}
    else:
        extra = toy_records(6300, seed=9).iloc[300:]
        seed_records(anomdet_env, extra.assign(label=pd.array([None] * len(extra),
                                                              dtype="Int64")))
    before = visible(anomdet_env)
    env = _cli_env(anomdet_env) | slow | {"ANOMDET_PROMOTION__FIRST_RUN": "always",
                                   "ANOMDET_PROMOTION__BOOTSTRAP_RESAMPLES": "0",
                                   "ANOMDET_PROMOTION__MIN_ABSOLUTE_IMPROVEMENT": "0",
                                   "ANOMDET_TRAINING__EPOCHS": "3",
                                   "ANOMDET_CHUNK_SIZE": "100",
                                   "ANOMDET_SCORING__BACKFILL_CHUNKS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cli", "retrain"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_moment(moment, anomdet_env, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    free_retrain_slot()
    assert visible(anomdet_env) == before
    outcome = retrain()
    with session_scope(get_engine(anomdet_env)) as session:
        killed = repo.recent_runs(session=session, model_name="anomdet")[1]
    assert killed.state == "failed" and killed.reason.startswith("abandoned: process")
    assert outcome.decision in ("promoted", "rejected")
    with session_scope(get_engine(anomdet_env)) as session:
        versions = repo.list_versions(session=session, model_name="anomdet")
    statuses = [v.status for v in versions]
    assert statuses.count("champion") == 1 and "candidate" not in statuses
    if moment == "backfill":
        # The killed run's candidate, half backfilled, is what the next run promoted.
        assert outcome.decision == "promoted" and "resumed" in outcome.reason
        assert [v.run_id for v in versions if v.status == "champion"] == [killed.id]


def _wait_for_moment(moment: str, url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        if moment == "training" and _running_runs(url) and _fine_tuning_started(url):
            time.sleep(1.0)
            return
        if moment == "backfill" and _candidate_scores(url):
            return  # the candidate is registered and its backfill has begun
        time.sleep(0.05)
    pytest.fail(f"the run never reached {moment}")


def _candidate_scores(url: str) -> int:
    with get_engine(url).connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT count(*) FROM anomdet_scores s JOIN anomdet_model_versions v "
            "ON v.id = s.model_version_id WHERE v.status = 'candidate'")).scalar_one())


def _running_runs(url: str) -> int:
    with get_engine(url).connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT count(*) FROM anomdet_runs WHERE state = 'running'")).scalar_one())


def _fine_tuning_started(url: str) -> bool:
    with get_engine(url).connect() as conn:
        return bool(conn.execute(sa.text(
            "SELECT count(*) FROM anomdet_runs WHERE state = 'running' AND test_rows IS NOT NULL"
        )).scalar_one())
