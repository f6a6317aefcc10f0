"""Promotion that waits for a person (ANOMDET_PROMOTION__REQUIRE_APPROVAL=true): the run
pauses with a form, and its answer, given through the API as the UI gives it, decides.
Against the test session's Prefect API; tests/test_server_e2e.py answers one on a real
server."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType

from db import repository as repo
from db.engine import get_engine, session_scope
from db.models import ModelVersion
from tests.databases import only_on
from tests.flows.test_retrain import seed_records, snapshot, toy_records

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def approval_env(anomdet_env: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ANOMDET_PROMOTION__REQUIRE_APPROVAL", "true")
    monkeypatch.setenv("ANOMDET_TRAINING__MIN_STEPS", "12")  # what is trained matters not
    seed_records(anomdet_env, toy_records())
    return anomdet_env


def _in_thread(target: Any) -> tuple[threading.Thread, list[Any]]:
    results: list[Any] = []

    def run() -> None:
        try:
            results.append(target())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            results.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, results


def _paused_run(results: list[Any], timeout: float = 180) -> Any:
    """The flow run that waits for approval, once it has paused."""
    deadline = time.monotonic() + timeout
    paused = FlowRunFilter(state=FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert not results, f"the run ended without pausing: {results}"
            runs = client.read_flow_runs(flow_run_filter=paused)
            # Paused, and said why: the state's message and the tag come just after.
            if runs and (runs[0].state.message or "").startswith("awaiting approval"):
                [run] = runs
                assert "awaiting-approval" in run.tags, run.tags
                return run
            time.sleep(0.5)
    pytest.fail("no run paused for approval")


def _answer(run: Any, answer: dict[str, str]) -> None:
    with get_client(sync_client=True) as client:
        result = client.resume_flow_run(run.id, run_input=answer)
    assert result.status.value == "ACCEPT", result


def _latest_run(url: str) -> Any:
    with session_scope(get_engine(url)) as session:
        return repo.recent_runs(session=session, model_name="anomdet", limit=1)[0]


@only_on("sqlite")
def test_a_person_rejects_the_challenger_and_nothing_changes(approval_env: str) -> None:
    from flows.retrain import retrain

    thread, results = _in_thread(retrain)
    run = _paused_run(results)
    # The form the UI shows: its fields, and the decision above them.
    with get_client(sync_client=True) as client:
        form = _form(client, run.id)
    assert set(form["schema"]["properties"]) == {"decision", "reviewer", "comment"}
    assert "Promote this challenger?" in form["description"]
    assert "| f1 |" in form["description"] and "| check | result | detail |" in \
        form["description"]
    _answer(run, {"decision": "reject", "reviewer": "Ada", "comment": "flags backups"})
    thread.join(timeout=180)
    [outcome] = results
    assert outcome.decision == "rejected"
    assert outcome.message == "not promoted: rejected by Ada: flags backups"
    with get_client(sync_client=True) as client:
        tags = client.read_flow_run(run.id).tags
    assert "rejected" in tags and "awaiting-approval" not in tags, tags
    after = snapshot(approval_env)  # no version, no champion, no flag
    assert (after["champion"], after["versions"], after["flags"]) == (None, [], [])
    row = _latest_run(approval_env)
    assert row.decision == "rejected" and "Not promoted: rejected by Ada" in row.reason
    approval = row.details["approval"]
    assert (approval["answer"], approval["reviewer"], approval["comment"]) == (
        "reject", "Ada", "flags backups")
    assert approval["answered_at"] and approval["waited_seconds"] > 0


def _form(client: Any, flow_run_id: Any) -> dict[str, Any]:
    """The paused run's form as the UI reads it: its schema and its description."""
    response = client.request("POST", "/flow_runs/{id}/input/filter",
                              path_params={"id": flow_run_id},
                              json={"prefix": "paused-", "limit": 10})
    values = {item["key"].rsplit("-", 1)[-1]: json.loads(item["value"])
              for item in response.json()}
    return {"schema": values["schema"], "description": values["description"]}


@only_on("sqlite")
def test_an_approval_after_the_champion_moved_abandons_the_promotion(
        approval_env: str) -> None:
    from flows.retrain import retrain

    thread, results = _in_thread(retrain)
    run = _paused_run(results)
    with session_scope(get_engine(approval_env)) as session:  # meanwhile, another champion
        session.add(ModelVersion(model_name="anomdet", version=7, status="champion",
                                 base_model="tiny-random", artifact_uri="-",
                                 weights_sha256="-", data_fingerprint="-", hyperparameters={},
                                 metrics={}, threshold=0.5))
    _answer(run, {"decision": "approve", "reviewer": "Ada", "comment": ""})
    thread.join(timeout=180)
    [outcome] = results
    assert outcome.decision == "rejected" and "abandoned" in outcome.message
    row = _latest_run(approval_env)
    assert row.details["approval"]["answer"] == "approve"
    assert "changed while the challenger waited for approval" in row.reason
    assert [v for v, _ in snapshot(approval_env)["versions"]] == [7]  # nothing registered


@only_on("sqlite")
def test_no_answer_within_the_timeout_rejects(approval_env: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.retrain import retrain

    monkeypatch.setenv("ANOMDET_PROMOTION__APPROVAL_TIMEOUT_MINUTES", "0.05")  # 3 s
    outcome = retrain()
    assert outcome.decision == "rejected" and "no answer" in outcome.message
    row = _latest_run(approval_env)
    assert row.details["approval"]["answer"] == "timed out"
    assert snapshot(approval_env)["champion"] is None
