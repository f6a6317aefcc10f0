"""tasks.promotion: the rule gets the configured policy; a promotion registers a candidate,
then flips it to champion by compare-and-set; a candidate that will not serve is
discarded, and one left behind is found with what its run decided."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.cache_policies import NO_CACHE

import tasks.promotion as tp
from anomdet.settings import Settings
from db import repository as repo
from db.engine import get_engine, migrate, session_scope
from db.models import ModelVersion
from tests.tasks.conftest import Recorder


@pytest.mark.parametrize(("task", "name", "retries"), [
    (tp.decide_promotion, "decide promotion", 0), (tp.store_artifact, "store artifact", 2),
    (tp.register_candidate, "register candidate", 3), (tp.flip_champion, "flip champion", 3),
    (tp.discard_candidate, "discard candidate", 3),
    (tp.find_pending_candidate, "find pending candidate", 3),
])
def test_names_no_cache_and_retries_where_a_retry_is_safe(task: object, name: str,
                                                          retries: int) -> None:
    # Database steps are retried only on a lost connection, and find a try that went
    # through (below); a retried save writes a new folder, and the rollback removes it.
    assert (task.name, task.cache_policy, task.retries) == (name, NO_CACHE, retries)


def _database(url: str, **settings: object) -> tuple[Settings, object]:
    engine = get_engine(url)
    migrate(engine)
    return Settings(database_url=url, **settings), engine


def test_a_retried_registration_returns_the_version_its_first_try_inserted(
        sqlite_url: str) -> None:
    settings, engine = _database(sqlite_url)
    with session_scope(engine) as session:
        run_id = repo.start_run(session=session, model_name="anomdet").id
    first = tp.register_candidate.fn(settings, _fields(run_id=run_id))
    # The answer to the first try was lost: the retry must not insert a second version.
    assert tp.register_candidate.fn(settings, _fields(run_id=run_id)) == first
    with session_scope(engine) as session:
        [version] = repo.list_versions(session=session, model_name="anomdet")
        assert (version.status, version.version) == ("candidate", 1)


def _candidate(settings: Settings, engine: object, scores: list[repo.ScoreRow],
               **fields: object) -> int:
    version_id, _ = tp.register_candidate.fn(settings, _fields(**fields))
    with session_scope(engine) as session:
        repo.write_scores(session=session, model_version_id=version_id, rows=scores,
                          threshold=0.5)
    return version_id


def test_decision_uses_the_configured_policy(monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    from anomdet.promotion import Decision

    decision = Decision(promote=False, checks=(), reason="the challenger is worse")
    decide = Recorder(decision)
    monkeypatch.setattr(tp, "decide", decide)
    settings = Settings(promotion={"primary_metric": "pr_auc", "min_absolute_improvement": 0.01})
    with caplog.at_level("INFO", logger="tasks"):
        assert tp.decide_promotion.fn("challenger", "champion", settings, "baseline") is decision
    # The decision in words, in the run's logs.
    assert ("the challenger does not pass the promotion rule: the challenger is worse"
            in caplog.messages)
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
    from anomdet.encoder import TINY_RANDOM, load_base_model
    from anomdet.lexical import WEIGHTS_FILE, Blend, LexicalEvidence, LexicalModel

    model, tokenizer = load_base_model(TINY_RANDOM, seed=0)
    ngrams = LexicalModel.fit(["disk failure", "login ok"] * 5, [1, 0] * 5, seed=0)
    lexical = LexicalEvidence(ngrams, Blend(1.0, 1.0))
    settings = Settings(artifacts_dir=tmp_path)
    stored = tp.store_artifact.fn(
        SimpleNamespace(model=model, tokenizer=tokenizer, lexical=lexical), settings,
        {"threshold": 0.5})
    assert stored.path.parent == tmp_path.resolve() / settings.model_name
    assert stored.checksum == sha256_file(stored.path / MANIFEST_FILE)
    # The n-gram model is part of what the checksum covers.
    assert WEIGHTS_FILE in (stored.path / MANIFEST_FILE).read_text()
    verify_artifact(stored.path, stored.checksum)


def _fields(**over: object) -> dict:
    return {"base_model": "tiny-random", "artifact_uri": "/models/x", "weights_sha256": "0" * 64,
            "data_fingerprint": "f" * 64, "hyperparameters": {}, "metrics": {"f1": 0.5},
            "threshold": 0.5, **over}


def test_the_flip_makes_the_candidate_champion_and_refuses_a_stale_champion(
        sqlite_url: str) -> None:
    settings, engine = _database(sqlite_url, scoring={"keep_versions": 0})
    scores = [repo.ScoreRow("1", 0.9, "h1"), repo.ScoreRow("2", 0.1, "h2"),
              repo.ScoreRow("3", None, None)]
    first = _candidate(settings, engine, scores)
    with session_scope(engine) as session:
        assert repo.get_champion(session=session, model_name="anomdet") is None
    flipped = tp.flip_champion.fn(settings, first, None)
    assert (flipped.version_id, flipped.version) == (first, 1)
    assert (flipped.scored, flipped.flagged) == (3, 1)
    # A retried flip whose first try went through finds the candidate champion already.
    assert tp.flip_champion.fn(settings, first, None) == flipped
    # A candidate of a run that evaluated against "no champion" comes too late: it stays
    # a candidate and the champion stays.
    late = _candidate(settings, engine, scores[:1])
    with pytest.raises(repo.ChampionChanged):
        tp.flip_champion.fn(settings, late, None)
    with session_scope(engine) as session:
        assert repo.get_champion(session=session, model_name="anomdet").id == first
        assert session.get(ModelVersion, late).status == "candidate"
    second = tp.flip_champion.fn(settings, late, first)
    assert second.version == 2
    with session_scope(engine) as session:
        assert repo.get_champion(session=session, model_name="anomdet").id == late
        # keep_versions=0: the retired version's scores are pruned, its flags stay.
        assert repo.count_scores(session=session, model_version_id=first) == 0
        assert repo.count_flags(session=session, model_version_id=first) == 1


def test_a_discarded_candidate_leaves_no_scores_flags_or_files_and_a_champion_stays(
        sqlite_url: str, tmp_path: Path) -> None:
    settings, engine = _database(sqlite_url)
    folders = [tmp_path / name for name in ("candidate", "champion")]
    for folder in folders:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
    scores = [repo.ScoreRow("1", 0.9, "h1")]
    champion = _candidate(settings, engine, scores, artifact_uri=str(folders[1]))
    tp.flip_champion.fn(settings, champion, None)
    candidate = _candidate(settings, engine, scores, artifact_uri=str(folders[0]))
    assert tp.discard_candidate.fn(settings, candidate, "the data changed")
    assert not tp.discard_candidate.fn(settings, champion, "never a version in service")
    with session_scope(engine) as session:
        assert session.get(ModelVersion, candidate).status == "rejected"
        assert repo.count_scores(session=session, model_version_id=candidate) == 0
        assert repo.count_flags(session=session, model_version_id=candidate) == 0
        assert repo.count_flags(session=session, model_version_id=champion) == 1
        assert repo.get_champion(session=session, model_name="anomdet").id == champion
    assert not folders[0].exists() and folders[1].exists()


def test_a_pending_candidate_carries_what_its_run_saw_and_decided(sqlite_url: str) -> None:
    settings, engine = _database(sqlite_url)
    assert tp.find_pending_candidate.fn(settings) is None
    with session_scope(engine) as session:
        run_id = repo.start_run(session=session, model_name="anomdet").id
        repo.record_progress(session=session, run_id=run_id, progress=repo.RunProgress(
            data_fingerprint="d" * 64, champion_version_id=None, baseline_metrics={"f1": 0.4},
            details={"decision_reason": "beats the baseline", "checks": []}))
    version_id = _candidate(settings, engine, [], run_id=run_id)
    pending = tp.find_pending_candidate.fn(settings)
    assert (pending.version_id, pending.run_id, pending.reason) == (
        version_id, run_id, "beats the baseline")
    assert pending.baseline_metrics == {"f1": 0.4}
    assert pending.in_progress(240), "its run has not ended: the candidate is that run's"
    assert not pending.in_progress(0), "past the retrain timeout its run is taken as dead"
    assert pending.stale_because("d" * 64, None) is None
    assert "labelled records changed" in pending.stale_because("e" * 64, None)
    assert "champion changed" in pending.stale_because("d" * 64, 7)
