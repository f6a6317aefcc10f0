"""tasks.report and tasks.progress: what is published, under which stable keys."""

from __future__ import annotations

import numpy as np
import pytest
from prefect.cache_policies import NO_CACHE

import tasks.progress as tprog
import tasks.report as tr
from anomdet.promotion import Check, Decision, EvalResult
from anomdet.report import metrics_table
from tests.tasks.conftest import Recorder

DECISION = Decision(promote=True, checks=(Check("f1 floor", True, "0.8 >= 0.5"),),
                    reason="better")
CHALLENGER = {"f1": 0.8, "precision": 0.75}


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> dict[str, Recorder]:
    made = {"table": Recorder(), "markdown": Recorder()}
    monkeypatch.setattr(tr, "create_table_artifact", made["table"])
    monkeypatch.setattr(tr, "create_markdown_artifact", made["markdown"])
    return made


@pytest.mark.parametrize("task", [tr.publish_decision, tr.publish_pr_curve,
                                  tr.publish_validation, tr.publish_flagged])
def test_publishing_is_never_cached(task: object) -> None:
    assert task.cache_policy is NO_CACHE and task.name.startswith("publish ")


def test_keys_are_what_prefect_accepts() -> None:
    assert tr._key("My_Model.v2", "metrics") == "my-model-v2-metrics"


def test_decision_and_metrics_side_by_side(published: dict[str, Recorder]) -> None:
    tr.publish_decision.fn("anomdet", CHALLENGER, None, DECISION, {"f1": 0.6})
    table = published["table"].call[1]
    assert table["key"] == "anomdet-metrics"
    assert table["table"] == metrics_table(CHALLENGER, None, {"f1": 0.6})
    markdown = published["markdown"].call[1]
    assert markdown["key"] == "anomdet-decision"
    assert "PROMOTED" in markdown["markdown"] and "f1 floor" in markdown["markdown"]


def test_pr_curve_draws_both_models(published: dict[str, Recorder],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    draw = Recorder("![curve](data:...)")
    monkeypatch.setattr(tr, "pr_curve_markdown", draw)
    labels = np.array([0, 1, 0, 1])
    challenger = EvalResult({"f1": 1.0}, labels, np.array([0.1, 0.9, 0.2, 0.8]), 0.5)
    champion = EvalResult({"f1": 0.5}, labels, np.array([0.4, 0.6, 0.7, 0.3]), 0.5)
    tr.publish_pr_curve.fn("anomdet", challenger, champion)
    (got_labels, ours, theirs), _ = draw.call
    assert got_labels is labels and ours is challenger.scores and theirs is champion.scores
    assert published["markdown"].call[1]["key"] == "anomdet-pr-curve"


def test_flagged_rows_are_cut_and_an_empty_list_says_so(published: dict[str, Recorder]
                                                        ) -> None:
    tr.publish_flagged.fn("anomdet", [{"record_id": 7, "score": 0.912345, "text": "x" * 300,
                                       "threshold": 0.51234, "model_version": 3}])
    tr.publish_flagged.fn("anomdet", [])
    first, empty = (kwargs["table"] for _, kwargs in published["table"].calls)
    assert first == [{"record_id": "7", "score": 0.9123, "threshold": 0.5123, "version": 3,
                      "text": "x" * 200}]
    assert empty[0]["text"] == "no flags"


def test_progress_updates_every_step_and_at_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    create, update = Recorder("artifact-id"), Recorder()
    monkeypatch.setattr(tprog, "create_progress_artifact", create)
    monkeypatch.setattr(tprog, "update_progress_artifact", update)
    report = tprog.ui_progress("scoring", step_percent=25, min_seconds=0)
    for done in (10, 20, 30, 55, 99, 100):
        report(done, 100)
    assert create.call[1] == {"progress": 0.0, "description": "scoring"}
    assert [kwargs["progress"] for _, kwargs in update.calls] == [30.0, 55.0, 99.0, 100.0]
    assert {kwargs["artifact_id"] for _, kwargs in update.calls} == {"artifact-id"}


def test_progress_calls_the_api_at_most_once_a_second_but_always_at_the_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    update = Recorder()
    monkeypatch.setattr(tprog, "create_progress_artifact", Recorder("artifact-id"))
    monkeypatch.setattr(tprog, "update_progress_artifact", update)
    clock = [100.0]
    monkeypatch.setattr(tprog.time, "monotonic", lambda: clock[0])
    report = tprog.ui_progress("fine-tuning", step_percent=5)
    # (seconds since the start, texts done of 100)
    for clock[0], done in ((100.3, 10), (100.9, 20), (101.2, 30), (101.5, 60), (101.6, 100)):
        report(done, 100)
    assert [kwargs["progress"] for _, kwargs in update.calls] == [30.0, 100.0]
