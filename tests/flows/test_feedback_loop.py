"""Reviewers' verdicts travel: flags labelled in the records table show up as production
precision in `anomdet models` and in the next run's summary, that run counts them as
new labels, and `anomdet queue` lists what to label next. On SQLite: the views' SQL has
its own tests on both databases (tests/db/test_feedback.py)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from typer.testing import CliRunner

from cli.app import app
from db import repository as repo
from db.engine import get_engine, session_scope
from tests.databases import only_on
from tests.flows.test_retrain import seed_records, toy_records

pytestmark = pytest.mark.usefixtures("prefect_harness")
runner = CliRunner(env={"COLUMNS": "220"})


def _summary(state) -> str:  # noqa: ANN001 - a Prefect state
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    return next(a.data for a in artifacts if a.key == "anomdet-summary")


@only_on("sqlite")
def test_reviewed_flags_reach_models_the_queue_and_the_next_run(
        anomdet_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.retrain import retrain

    monkeypatch.setenv("ANOMDET_TRAINING__MIN_STEPS", "12")  # what is trained matters not
    seed_records(anomdet_env, toy_records())
    assert retrain().decision == "promoted"
    engine = get_engine(anomdet_env)
    with session_scope(engine) as session:
        flagged = repo.flagged_rows(session=session, limit=10)
    assert len(flagged) == 10
    confirmed, dismissed = [r["record_id"] for r in flagged[:6]], [r["record_id"] for r in
                                                                   flagged[6:]]
    with engine.begin() as conn:  # the reviewers' verdicts, as the README shows them
        for ids, label in ((confirmed, 1), (dismissed, 0)):
            conn.execute(sa.text("UPDATE records SET label = :y WHERE id = :id"),
                         [{"y": label, "id": int(i)} for i in ids])

    models = runner.invoke(app, ["models"])
    assert models.exit_code == 0, models.output
    # 6 of 10 reviewed flags confirmed: 0.600, Wilson interval [0.313, 0.832].
    assert "0.600 [0.313, 0.832]" in models.output, models.output
    queue = runner.invoke(app, ["queue", "--limit", "5"])
    assert queue.exit_code == 0, queue.output
    assert "anomdet_label_queue" in queue.output and "closest to the threshold" in queue.output
    reviewed = set(confirmed + dismissed)
    with engine.connect() as conn:
        listed = conn.execute(sa.text("SELECT record_id FROM anomdet_label_queue")).scalars()
        assert reviewed.isdisjoint(listed)

    state = retrain(return_state=True)
    assert state.is_completed()
    with session_scope(engine) as session:
        latest = repo.recent_runs(session=session, model_name="anomdet", limit=1)[0]
    labels = latest.details["labels"]
    assert labels["reviewed"] == 10 and labels["new"] == 10, labels
    summary = _summary(state)
    assert "## Production precision" in summary
    assert "| v1 | " in summary and "| 10 (" in summary and "| 6 | 4 | 0.600 |" in summary
