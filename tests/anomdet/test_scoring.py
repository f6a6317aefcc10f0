"""anomdet.scoring: records keep their order and keys, records without text are counted
and never flagged, and a range is scored once per version and text, chunk by chunk."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import anomdet.inference as inference
from anomdet.encoder import TINY_RANDOM, load_base_model
from anomdet.inference import predict_scores
from anomdet.scoring import Scorer, ScoreSummary, scorable, score_rows
from db import repository as repo
from db.engine import get_engine, migrate, session_scope
from db.records import ensure_records_table, upsert_records
from tasks.scoring import score_id_range
from tests.configs import records_mapping
from tests.versions import promote

THRESHOLD = 0.5


def _fake_scores(model: object, tokenizer: object, texts: list[str], *, batch_size: int,
                 max_length: int, lexical: object = None) -> np.ndarray:
    # Stands in for the model: "odd" texts score high, the rest low.
    return np.array([0.9 if "odd" in t else 0.1 for t in texts])


@pytest.fixture
def scorer(monkeypatch: pytest.MonkeyPatch) -> Scorer:
    monkeypatch.setattr(inference, "predict_scores", _fake_scores)
    return Scorer(model=None, tokenizer=None, threshold=THRESHOLD, max_length=16, batch_size=4)


def test_only_non_blank_strings_are_scorable() -> None:
    frame = pd.DataFrame({"text": ["ok", "", "   ", None, 5, "odd"]})
    assert scorable(frame).tolist() == [True, False, False, False, False, True]


def test_rows_keep_order_keys_and_hashes(scorer: Scorer) -> None:
    frame = pd.DataFrame({"id": [3, 1, 2, 9], "key": ["3", "1", "2", "9"],
                          "text": ["odd one", "fine", None, "odd two"],
                          "text_hash": pd.Series(["h3", "h1", None, "h9"], dtype=object)})
    summary = ScoreSummary()
    rows = score_rows(scorer, frame, summary)
    assert rows == [repo.ScoreRow("3", 0.9, "h3"), repo.ScoreRow("1", 0.1, "h1"),
                    repo.ScoreRow("2", None, None), repo.ScoreRow("9", 0.9, "h9")]
    assert (summary.scored, summary.flagged, summary.skipped_ids) == (3, 2, ["2"])
    assert summary.as_dict()["skipped_example_ids"] == ["2"]


def test_a_frame_without_keys_uses_the_ids(scorer: Scorer) -> None:
    rows = score_rows(scorer, pd.DataFrame({"id": [7], "text": ["odd"]}), ScoreSummary())
    assert rows == [repo.ScoreRow("7", 0.9, None)]
    assert score_rows(scorer, pd.DataFrame({"id": [], "text": []}), ScoreSummary()) == []


@pytest.fixture
def records(sqlite_url: str) -> tuple:
    engine = get_engine(sqlite_url)
    migrate(engine)
    mapping = records_mapping()
    table = ensure_records_table(engine, mapping)
    texts = [f"{'odd' if i % 4 == 0 else 'fine'} event {i}" for i in range(1, 41)]
    texts[4] = ""  # id 5: nothing to score
    frame = pd.DataFrame({"id": range(1, 41), "text": texts,
                          "label": pd.array([None] * 30 + [0] * 10, dtype="Int64")})
    with engine.begin() as conn:
        upsert_records(conn, table, mapping, frame)
    with session_scope(engine) as session:
        version = promote(
            session, expected_champion_id=None, model_name="m", base_model="tiny-random",
            artifact_uri="/x", weights_sha256="0" * 64,
            data_fingerprint="f" * 64, hyperparameters={}, metrics={}, threshold=THRESHOLD)
    return engine, mapping, table, version.id


def test_a_range_is_scored_once_per_version_and_text(scorer: Scorer, records: tuple) -> None:
    engine, mapping, table, version_id = records
    seen: list[tuple[int, int]] = []
    first = score_id_range(scorer, engine, mapping, version_id=version_id, id_range=None,
                           chunk_size=8, progress=lambda d, t: seen.append((d, t)),
                           expected=30)
    # 30 unlabelled records, one without text; ids 4, 8, ..., 28 are "odd".
    assert (first.scored, first.skipped, first.flagged, first.flags_written) == (29, 1, 7, 7)
    assert len(seen) == 4 and seen[-1] == (30, 30)
    with session_scope(engine) as session:
        assert repo.count_scores(session=session, model_version_id=version_id) == 30
        assert repo.count_flags(session=session, model_version_id=version_id) == 7
    again = score_id_range(scorer, engine, mapping, version_id=version_id, id_range=None,
                           chunk_size=8)
    assert (again.scored, again.skipped, again.flags_written) == (0, 0, 0)
    # An edited text is scored again, and its flag goes when it no longer earns one.
    with engine.begin() as conn:
        conn.execute(table.update().where(table.c.id == 4).values(text="fine now"))
    edited = score_id_range(scorer, engine, mapping, version_id=version_id, id_range=None,
                            chunk_size=8)
    assert (edited.scored, edited.flagged) == (1, 0)
    with session_scope(engine) as session:
        assert repo.count_flags(session=session, model_version_id=version_id) == 6


def test_a_range_covers_its_own_ids_only(scorer: Scorer, records: tuple) -> None:
    engine, mapping, _, version_id = records
    low = score_id_range(scorer, engine, mapping, version_id=version_id, id_range=(None, 11),
                         chunk_size=100)
    high = score_id_range(scorer, engine, mapping, version_id=version_id, id_range=(11, None),
                          chunk_size=100)
    assert (low.scored + low.skipped, high.scored + high.skipped) == (10, 20)
    assert (low.flagged, high.flagged) == (2, 5)


def test_the_tiny_model_scores_through_a_scorer() -> None:
    model, tokenizer = load_base_model(TINY_RANDOM, seed=0)
    texts = ["disk failure", "login ok", "backup done"]
    frame = pd.DataFrame({"id": [1, 2, 3], "text": texts})
    scorer = Scorer(model, tokenizer, threshold=0.5, max_length=16, batch_size=2)
    rows = score_rows(scorer, frame, ScoreSummary())
    direct = predict_scores(model, tokenizer, texts, max_length=16)
    np.testing.assert_allclose([r.score for r in rows], direct, atol=1e-6)
    assert all(0 <= r.score <= 1 for r in rows)
