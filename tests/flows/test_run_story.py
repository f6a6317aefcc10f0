"""What a run tells in Prefect: its name, state message, tags, task names, artifacts and
logs, for a promoted, a rejected and a stopped run, and for scoring runs."""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from uuid import UUID

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler
from prefect.states import State

from anomdet.errors import DataValidationError
from tests.databases import only_on
from tests.flows.test_retrain import seed_records, toy_records

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _run(state: State) -> dict[str, Any]:
    """The flow run behind `state`: its record, task runs by name, artifacts by key."""
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return {"run": run, "tasks": {t.name: t for t in tasks},
            "artifacts": {a.key: a for a in artifacts if a.key}}


def _logs(run_id: UUID, handler: APILogHandler) -> list[Any]:
    handler.flush()
    with get_client(sync_client=True) as client:
        return client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))


class _Lines(logging.Handler):
    """Keeps the messages it is given."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@only_on("sqlite")
def test_promoted_and_rejected_runs_say_so_in_name_message_tags_and_artifacts(
        anomdet_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import anomdet.finetune
    from flows.retrain import retrain

    seed_records(anomdet_env, toy_records())
    monkeypatch.setenv("ANOMDET_TRAINING__MIN_STEPS", "12")  # what is trained matters not
    # Every step logs its progress, as a long run does once a minute.
    monkeypatch.setattr(anomdet.finetune, "PROGRESS_LOG_SECONDS", 0.0)
    lines = _Lines()
    logging.getLogger("anomdet.finetune").addHandler(lines)
    logging.getLogger("prefect.task_runs").addHandler(lines)
    try:
        state = retrain(return_state=True)
    finally:
        logging.getLogger("anomdet.finetune").removeHandler(lines)
        logging.getLogger("prefect.task_runs").removeHandler(lines)
    outcome = state.result()
    assert state.is_completed() and outcome.decision == "promoted"
    progress = lines.lines
    assert any(re.fullmatch(r"step \d+/\d+ \(\d+\.\d epochs\): train loss \d\.\d{4}, \d+ "
                            r"samples/s, about \d+m\d\ds left", m) for m in progress), progress
    first = _run(state)
    message = first["run"].state.message
    assert message == state.message == outcome.message
    assert re.fullmatch(rf"promoted v1: f1 {outcome.challenger['f1']:.3f} \(first "
                        rf"champion\), {outcome.flags_written} records flagged", message)
    assert "promoted" in first["run"].tags
    assert first["run"].name.startswith("retrain-anomdet-")
    # The promotion's backfill subflow run is named and tagged as the flows' runs are.
    with get_client(sync_client=True) as client:
        [backfill] = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[first["run"].id])))
    assert backfill.name.startswith("backfill-anomdet-")
    assert {"anomdet", "backfill"} <= set(backfill.tags), backfill.tags
    # The decision in words, not only as promote=True.
    decided = [m for m in lines.lines if m.startswith("the challenger passes the promotion")]
    assert decided and "first champion" in decided[0], lines.lines[-5:]
    assert "evaluate challenger" in first["tasks"]
    assert not any(name.startswith("evaluate champion") for name in first["tasks"])
    summary = first["artifacts"]["anomdet-summary"]
    assert summary.description == f"Run {outcome.run_id}: {message}"
    assert "Version 1 is champion now" in summary.data and "Model files: `" in summary.data
    assert first["artifacts"]["anomdet-decision"].description.startswith("**promoted**")
    assert first["artifacts"]["anomdet-drift"].description.endswith("**within bounds**")
    top = first["artifacts"]["anomdet-top-flagged"]
    assert "by v1 (threshold " in top.description
    assert "SELECT * FROM anomdet_flagged WHERE model_name = 'anomdet'" in top.description

    # A challenger that cannot win: rejected, against champion v1, and said so.
    monkeypatch.setenv("ANOMDET_TRAINING__LEARNING_RATE", "0.0000001")
    state = retrain(epochs=1, seed=5, return_state=True)
    outcome = state.result()
    assert state.is_completed() and outcome.decision == "rejected"
    second = _run(state)
    assert second["run"].state.message.startswith("rejected: ")
    assert "rejected" in second["run"].tags and "promoted" not in second["run"].tags
    assert {"evaluate challenger", "evaluate champion v1"} <= set(second["tasks"])
    assert second["artifacts"]["anomdet-decision"].description.startswith("**not promoted**")
    assert "Champion v1 stays" in second["artifacts"]["anomdet-summary"].data


@only_on("sqlite")
def test_failed_validation_fails_its_task_and_the_run_with_the_clean_message(
        anomdet_env: str) -> None:
    from flows.retrain import retrain

    frame = toy_records()
    frame.loc[frame["label"].notna(), "label"] = 0  # one class only
    seed_records(anomdet_env, frame)
    domain = logging.getLogger("anomdet")
    level, api = domain.level, APILogHandler()
    # As PREFECT_LOGGING_EXTRA_LOGGERS does, with the level Prefect leaves it: the root's.
    domain.setLevel(logging.NOTSET)
    domain.addHandler(api)
    try:
        state = retrain(return_state=True)
    finally:
        domain.removeHandler(api)
        domain.setLevel(level)
    assert state.is_failed()
    with pytest.raises(DataValidationError):
        state.result()
    run = _run(state)
    assert run["run"].state.message.startswith("data validation failed:\n- expect_")
    assert "Traceback" not in run["run"].state.message
    [validate] = [t for name, t in run["tasks"].items() if name.startswith("validate records")]
    assert validate.state.is_failed()
    assert validate.state.message == run["run"].state.message
    assert "failed-validation" in run["run"].tags
    assert run["artifacts"]["anomdet-validation"].description.startswith("**FAILED**")
    # anomdet's own INFO lines are in the run's logs, not only Prefect's.
    lines = [log.message for log in _logs(state.state_details.flow_run_id, api)
             if log.name == "anomdet.validation"]
    assert any(line.startswith("validation FAILED on ") for line in lines), lines


@only_on("sqlite")
def test_scoring_without_champion_completes_and_says_so(anomdet_env: str) -> None:
    from flows.score import score

    seed_records(anomdet_env, toy_records(200))
    state = score(return_state=True)
    assert state.is_completed()
    assert "no champion yet" in state.message
    assert state.result()["scored"] == 0
    assert _run(state)["run"].name.startswith("score-anomdet-")


@only_on("sqlite")
def test_scoring_runs_name_their_ranges_and_publish_what_they_flagged(anomdet_env: str) -> None:
    from flows.retrain import retrain
    from flows.score import score

    seed_records(anomdet_env, toy_records(300))
    assert retrain().decision == "promoted"
    nothing = score(return_state=True)
    assert nothing.is_completed() and nothing.message.startswith("nothing new to score: v1 ")
    extra = toy_records(500, seed=5).iloc[300:].assign(label=pd.NA).astype({"label": "Int64"})
    seed_records(anomdet_env, extra)
    state = score(chunks=2, return_state=True)
    summary = state.result()
    assert state.message == (f"v1: {summary['scored']} records scored, "
                             f"{summary['flagged']} flagged")
    run = _run(state)
    ranges = [name for name in run["tasks"] if name.startswith("score ids ")]
    assert len(ranges) == 2 and all(re.fullmatch(r"score ids \S+-\S+", n) for n in ranges)
    assert run["artifacts"]["anomdet-scoring"].description.startswith(
        f"v1: {summary['scored']} scored, {summary['flagged']} newly flagged")
    flags = json.loads(run["artifacts"]["anomdet-new-flags"].data)
    new_ids = {str(i) for i in extra["id"]}
    if summary["flagged"]:
        assert flags and {row["record_id"] for row in flags} <= new_ids
        assert all(row["version"] == 1 for row in flags)
