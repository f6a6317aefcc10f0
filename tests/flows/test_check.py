"""The check flow: it starts the retrain deployment once enough labels are newer than the
champion's training data (on SQLite and PostgreSQL, whose SQL counts them), or the
unlabelled records drifted (on SQLite: drift is measured in Python), and not again while
that retrain is queued or its labels were seen. Against the test
session's Prefect API, where the retrain deployment is registered but no worker runs it;
tests/test_server_e2e.py runs the started retrain on a real server."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client

from anomdet.settings import Settings
from db import repository as repo
from db.engine import get_engine, session_scope
from tests.databases import only_on
from tests.flows.test_retrain import seed_records, toy_records

pytestmark = pytest.mark.usefixtures("prefect_harness")
DEPLOYMENT = "retrain/retrain-check-test"


@pytest.fixture
def retrain_deployment() -> Iterator[str]:
    """The retrain flow registered as a deployment that nothing executes."""
    from flows.retrain import retrain

    deployment_id = retrain.to_deployment(name=DEPLOYMENT.split("/")[1]).apply()
    yield DEPLOYMENT
    with get_client(sync_client=True) as client:
        client.delete_deployment(deployment_id)


def _label_flagged(url: str, count: int) -> None:
    """Reviewers label `count` of the champion's flags."""
    engine = get_engine(url)
    with session_scope(engine) as session:
        ids = [int(r["record_id"]) for r in repo.flagged_rows(session=session, limit=count)]
    assert len(ids) == count
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE records SET label = 1 WHERE id = :id"),
                     [{"id": i} for i in ids])


def _retrain_runs(deployment: str) -> list:
    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        return client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[found.id])))


# Orchestration (Prefect starts the deployment once): SQLite only; the labels are counted on
# both databases in tests/db/test_feedback.py.
@only_on("sqlite")
def test_new_labels_start_the_retrain_deployment_once(
        anomdet_env: str, retrain_deployment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.check import check
    from flows.retrain import retrain
    from tasks.check import gather_findings

    monkeypatch.setenv("ANOMDET_TRAINING__MIN_STEPS", "12")
    monkeypatch.setenv("ANOMDET_REVIEW__RETRAIN_AFTER_LABELS", "8")
    seed_records(anomdet_env, toy_records())
    assert retrain().decision == "promoted"

    _label_flagged(anomdet_env, 5)
    quiet = check(retrain_deployment=retrain_deployment, return_state=True)
    assert quiet.is_completed() and quiet.message.startswith("nothing to do: 5 new labels")
    assert _retrain_runs(retrain_deployment) == []

    _label_flagged(anomdet_env, 9)  # 9 more of its flags (the view hides labelled ones)
    started = check(retrain_deployment=retrain_deployment, return_state=True)
    assert started.message.startswith("started "), started.message
    assert "14 labels newer than the champion's training data" in started.message
    [run] = _retrain_runs(retrain_deployment)
    assert "started-by-check" in run.tags and run.name in started.message
    # Named for good as it is created, and told which model to retrain.
    assert re.fullmatch(r"retrain-anomdet-\d{4}-\d\d-\d\d-\d{4}", run.name), run.name
    assert run.parameters == {"model_name": "anomdet"}
    # That run is queued: another check starts nothing.
    again = check(retrain_deployment=retrain_deployment, return_state=True)
    assert again.message.startswith("a retrain is under way"), again.message
    assert len(_retrain_runs(retrain_deployment)) == 1

    # A retraining run that saw those 14 labels (rejected, say) ends the matter.
    with get_client(sync_client=True) as client:
        client.delete_flow_run(run.id)
    with session_scope(get_engine(anomdet_env)) as session:
        champion = repo.get_champion(session=session, model_name="anomdet")
        seen = repo.start_run(session=session, model_name="anomdet")
        repo.record_progress(session=session, run_id=seen.id, progress=repo.RunProgress(
            details={"labels": {"new": 14, "champion_version_id": champion.id}}))
        repo.end_run(session=session, run_id=seen.id, ending=repo.RunEnding(
            state="completed", decision="rejected", reason="test"))
    findings = gather_findings.fn(Settings())
    assert (findings.new_labels, findings.seen_by_last_run) == (14, 14)
    done = check(retrain_deployment=retrain_deployment, return_state=True)
    assert done.message.startswith("nothing to do: 0 new labels"), done.message


@only_on("sqlite")
def test_drift_of_unlabelled_records_starts_a_retrain(
        anomdet_env: str, retrain_deployment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.check import check
    from flows.retrain import retrain
    from tests.flows.test_retrain import seed_records as seed

    monkeypatch.setenv("ANOMDET_TRAINING__MIN_STEPS", "12")
    seed_records(anomdet_env, toy_records())
    assert retrain().decision == "promoted"
    assert check(retrain_deployment=retrain_deployment, return_state=True).is_completed()
    assert _retrain_runs(retrain_deployment) == []  # the same kind of text: no drift
    frame = toy_records(200)
    frame["id"] += 10_000
    frame["label"] = None
    frame["text"] = ["stack trace " + " ".join(f"frame{i}_{n}" for i in range(60))
                     for n in range(len(frame))]  # long lines of words no model knows
    seed(anomdet_env, frame)
    monkeypatch.setenv("ANOMDET_REVIEW__RETRAIN_ON_DRIFT", "false")
    off = check(retrain_deployment=retrain_deployment, return_state=True)
    assert off.message.startswith("nothing to do"), off.message
    monkeypatch.delenv("ANOMDET_REVIEW__RETRAIN_ON_DRIFT")
    drifted = check(retrain_deployment=retrain_deployment, return_state=True)
    assert drifted.message.startswith("started "), drifted.message
    assert "text length distribution" in drifted.message
    assert len(_retrain_runs(retrain_deployment)) == 1
