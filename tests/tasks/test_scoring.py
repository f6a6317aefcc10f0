"""tasks.scoring: planning and finishing retry on connection failures; each range is
scored by the domain's one range function with the plan's version and sizes."""

from __future__ import annotations

import pytest
from prefect.cache_policies import NO_CACHE

import tasks.scoring as ts
from anomdet.scoring import ScoreSummary
from anomdet.settings import Settings
from db import repository as repo
from db.engine import get_engine, migrate
from tasks.database import only_transient
from tests.tasks.conftest import Recorder

PLAN = ts.ScoringPlan(version_id=4, artifact_uri="/models/v4", weights_sha256="ab" * 32,
                      ranges=((1, 50), (51, None)), records=99, unkeyed=2,
                      unkeyed_ids=("7", "8"), recorded=(("threshold", 0.5),))


@pytest.mark.parametrize(("task", "name"), [(ts.plan_scoring, "plan scoring"),
                                            (ts.finish_scoring, "finish scoring")])
def test_database_steps_retry_on_connection_failures(task: object, name: str) -> None:
    assert (task.name, task.cache_policy, task.retries) == (name, NO_CACHE, 2)
    assert task.retry_condition_fn is only_transient


def test_scoring_a_range_does_not_retry() -> None:
    # Each chunk commits on its own; a rerun of the flow resumes where this one stopped.
    task = ts.score_range
    assert (task.name, task.cache_policy, task.retries) == ("score id range", NO_CACHE, 0)


def test_range_size_rounds_up() -> None:
    assert PLAN.range_size == 50
    assert ts.ScoringPlan(1, "", "", (), 0).range_size == 0


def test_a_range_is_scored_with_the_plans_version_and_settings(
        monkeypatch: pytest.MonkeyPatch, no_progress: Recorder) -> None:
    settings = Settings(chunk_size=300, score_batch_size=9)
    scorer, summary = object(), ScoreSummary(scored=3, flagged=1, skipped_ids=["x"])
    make_scorer, score = Recorder(scorer), Recorder(summary)
    monkeypatch.setattr(ts, "_scorer", make_scorer)
    monkeypatch.setattr(ts, "score_id_range", score)
    assert ts.score_range.fn(settings, PLAN, (51, None)) == summary.counts()
    assert make_scorer.call == (("/models/v4", "ab" * 32, 9, (("threshold", 0.5),)), {})
    (used, engine, mapping), kwargs = score.call
    assert used is scorer and engine is get_engine(settings.database_url)
    assert mapping == settings.records.mapping()
    assert kwargs["version_id"] == 4 and kwargs["id_range"] == (51, None)
    assert kwargs["chunk_size"] == 300 and kwargs["expected"] == 50
    assert no_progress.call[0] == ("scoring ids from 51 to end",)


def test_no_champion_means_no_plan(sqlite_url: str) -> None:
    migrate(get_engine(sqlite_url))
    assert ts.plan_scoring.fn(Settings(database_url=sqlite_url), chunks=4) is None


def test_finish_adds_the_ranges_up_and_prunes(sqlite_url: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    migrate(get_engine(sqlite_url))
    prune = Recorder(12)
    monkeypatch.setattr(repo, "prune_scores", prune)
    parts = [ScoreSummary(scored=40, flagged=3, skipped_ids=list(range(15))).counts(),
             ScoreSummary(scored=30, flagged=2, skipped_ids=list(range(15, 25))).counts()]
    settings = Settings(database_url=sqlite_url, scoring={"keep_versions": 1})
    total = ts.finish_scoring.fn(settings, PLAN, parts).to_dict()
    assert (total["scored"], total["flagged"], total["skipped"]) == (70, 5, 25)
    assert total["records"] == 101 and total["unkeyed_example_ids"] == ["7", "8"]
    assert len(total["skipped_example_ids"]) == 20
    assert total["pruned_scores"] == 12
    assert prune.call[1]["keep_versions"] == 1 and prune.call[1]["model_name"] == "anomdet"
