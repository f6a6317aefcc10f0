"""tasks.promotion: the rule gets the configured policy; the commit is one transaction
that moves the champion by compare-and-set and writes the scores' flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.cache_policies import NO_CACHE

import tasks.promotion as tp
from anomdet.settings import Settings
from db import repository as repo
from db.engine import get_engine, migrate, session_scope
from tests.tasks.conftest import Recorder


@pytest.mark.parametrize(("task", "name", "retries"), [
    (tp.decide_promotion, "decide promotion", 0), (tp.store_artifact, "store artifact", 2),
    (tp.score_unlabelled, "score unlabelled records", 3),
    (tp.commit_promotion, "commit promotion", 3),
])
def test_names_no_cache_and_retries_where_a_retry_is_safe(task: object, name: str,
                                                          retries: int) -> None:
    # The commit is retried only on a lost connection, and finds a try that went through
    # (below); a retried save writes a new folder, and the rollback removes the saved one.
    assert (task.name, task.cache_policy, task.retries) == (name, NO_CACHE, retries)


def test_a_retried_commit_returns_the_version_its_first_try_committed(sqlite_url: str) -> None:
    settings = Settings(database_url=sqlite_url)
    engine = get_engine(sqlite_url)
    migrate(engine)
    with session_scope(engine) as session:
        run_id = repo.start_run(session=session, model_name="anomdet").id
    fields = _fields(run_id=run_id)
    first = tp.commit_promotion.fn(settings, expected_champion_id=None, version_fields=fields,
                                   scores=[repo.ScoreRow("1", 0.9, "h1")])
    # The answer to the first try was lost: the retry still expects "no champion".
    again = tp.commit_promotion.fn(settings, expected_champion_id=None, version_fields=fields,
                                   scores=[repo.ScoreRow("1", 0.9, "h1")])
    assert again == first
    with session_scope(engine) as session:
        assert len(repo.list_versions(session=session, model_name="anomdet")) == 1
        assert repo.count_flags(session=session, model_version_id=first[0]) == 1


def test_decision_uses_the_configured_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    decide = Recorder("decision")
    monkeypatch.setattr(tp, "decide", decide)
    settings = Settings(promotion={"primary_metric": "pr_auc", "min_absolute_improvement": 0.01})
    assert tp.decide_promotion.fn("challenger", "champion", settings, "baseline") == "decision"
    (challenger, champion, policy, baseline), _ = decide.call
    assert (challenger, champion, baseline) == ("challenger", "champion", "baseline")
    assert policy == settings.promotion.policy()
    assert policy.primary_metric == "pr_auc"


def test_a_failed_promotion_removes_its_artifact(tmp_path: Path) -> None:
    directory = tmp_path / "artifact"
    directory.mkdir()
    (directory / "model.safetensors").write_bytes(b"weights")

    class Txn:
        def get(self, key: str, default: object = None) -> object:
            return {tp.ARTIFACT_KEY: str(directory)}.get(key, default)

    tp._remove_artifact(Txn())
    assert not directory.exists()


def test_a_stored_artifact_gives_its_folder_and_the_checksum_that_verifies_it(
        tmp_path: Path) -> None:
    from types import SimpleNamespace

    from anomdet.artifact import MANIFEST_FILE, sha256_file, verify_artifact
    from anomdet.model import TINY_RANDOM, load_base_model

    model, tokenizer = load_base_model(TINY_RANDOM, seed=0)
    settings = Settings(artifacts_dir=tmp_path)
    stored = tp.store_artifact.fn(SimpleNamespace(model=model, tokenizer=tokenizer), settings,
                                  {"threshold": 0.5})
    assert stored.path.parent == tmp_path.resolve() / settings.model_name
    assert stored.checksum == sha256_file(stored.path / MANIFEST_FILE)
    verify_artifact(stored.path, stored.checksum)


def _fields(**over: object) -> dict:
    return {"base_model": "tiny-random", "artifact_uri": "/models/x", "weights_sha256": "0" * 64,
            "data_fingerprint": "f" * 64, "hyperparameters": {}, "metrics": {"f1": 0.5},
            "threshold": 0.5, **over}


def test_commit_promotes_writes_flags_and_refuses_a_stale_champion(sqlite_url: str) -> None:
    settings = Settings(database_url=sqlite_url, scoring={"keep_versions": 0})
    engine = get_engine(sqlite_url)
    migrate(engine)
    scores = [repo.ScoreRow("1", 0.9, "h1"), repo.ScoreRow("2", 0.1, "h2"),
              repo.ScoreRow("3", None, None)]
    first_id, number = tp.commit_promotion.fn(settings, expected_champion_id=None,
                                              version_fields=_fields(), scores=scores)
    assert number == 1
    with session_scope(engine) as session:
        assert repo.get_champion(session=session, model_name="anomdet").id == first_id
        assert repo.count_scores(session=session, model_version_id=first_id) == 3
        assert repo.count_flags(session=session, model_version_id=first_id) == 1
    # A run that evaluated against "no champion" comes too late: nothing changes.
    with pytest.raises(repo.ChampionChanged):
        tp.commit_promotion.fn(settings, expected_champion_id=None,
                               version_fields=_fields(), scores=[])
    second_id, number = tp.commit_promotion.fn(settings, expected_champion_id=first_id,
                                               version_fields=_fields(), scores=scores[:1])
    assert number == 2
    with session_scope(engine) as session:
        assert repo.get_champion(session=session, model_name="anomdet").id == second_id
        # keep_versions=0: the retired version's scores are pruned, its flags stay.
        assert repo.count_scores(session=session, model_version_id=first_id) == 0
        assert repo.count_flags(session=session, model_version_id=first_id) == 1
