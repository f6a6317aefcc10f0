"""The scoring benchmark on tiny sizes: every figure is present, positive and finite, the
timed writes really store their rows (the same rows on the bulk and the ORM side), the
end-to-end path is the scoring task's own and flags exactly the records whose score reaches
the threshold, and a PostgreSQL run leaves no rows of its own behind."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch
import typer
from typer.testing import CliRunner

import tasks.scoring
from anomdet.encoder import load_base_model
from anomdet.inference import predict_scores
from anomdet.scoring import Scorer
from bench import scoring as bench_scoring
from bench.scoring import (
    ScoreBenchConfig,
    bench_flag_writes,
    bench_score_command,
    flag_threshold,
    new_model_version,
    prepared_engine,
    seed_records,
    unlabelled_demo_frame,
)
from db import repository as repo
from db.engine import session_scope
from db.models import Flag, ModelVersion
from tasks.scoring import score_id_range
from tests.configs import records_mapping

FLAG_KEYS = ("backend", "bulk_rows", "bulk_seconds", "orm_rows", "orm_seconds",
             "bulk_rows_per_s", "orm_rows_per_s", "speedup")
SCORING_KEYS = ("rows", "threshold", "model_only_rows_per_s", "e2e_rows_per_s", "ratio",
                "model_only_flagged", "e2e_flagged", "flags_written", "model_only_seconds",
                "e2e_seconds")
MEMORY_KEYS = ("rows", "scored", "flags_written", "rss_before_scoring_mb",
               "peak_before_scoring_mb", "scoring_peak_mb", "peak_mb", "peak_reset",
               "ru_maxrss_mb", "seed_seconds", "score_seconds")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared machine more threads only wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _positive(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_flag_writes_store_every_row_on_both_backends(db_url: str) -> None:
    config = ScoreBenchConfig(flag_rows=300, orm_rows=120, repeats=2)
    figures = bench_flag_writes(db_url, "any", config).as_dict()
    assert set(FLAG_KEYS) <= set(figures)
    assert (figures["bulk_rows"], figures["orm_rows"]) == (300, 120)
    for key in ("bulk_rows_per_s", "orm_rows_per_s", "speedup", "orm_seconds"):
        assert _positive(figures[key]), key
    assert len(figures["bulk_seconds"]) == 2
    engine = prepared_engine(db_url)
    with session_scope(engine) as session:
        # A warm-up write of 10, two bulk writes and one ORM write, each on its own version.
        assert repo.count_flags(session=session) == 10 + 2 * 300 + 120
        rows = session.execute(
            sa.select(ModelVersion.base_model, Flag.model_version_id, Flag.record_id,
                      Flag.score, Flag.threshold, Flag.run_id)
            .join(ModelVersion, ModelVersion.id == Flag.model_version_id)).all()
    written: dict[tuple[str, int], list[tuple]] = {}
    for label, version, *flag in sorted(rows, key=lambda r: (r[1], int(r.record_id))):
        written.setdefault((label, version), []).append(tuple(flag))
    bulk = [flags for (label, _), flags in written.items() if label == "bulk"]
    (orm,) = [flags for (label, _), flags in written.items() if label == "orm"]
    # The two paths store the same rows: each bulk write all 300, the ORM its first 120.
    assert len(bulk) == 2 and bulk[0] == bulk[1] and len(bulk[0]) == 300
    assert orm == bulk[0][:120]


def test_threshold_flags_the_wanted_share_and_sits_between_scores() -> None:
    scores = np.random.default_rng(0).random(1000)
    threshold = flag_threshold(scores, 0.05)
    assert (scores >= threshold).sum() == 50
    assert not np.isclose(scores, threshold).any()
    tied = np.array([0.9, 0.9, 0.9, 0.2, 0.1])
    # Ties at the top are kept together rather than split by the threshold.
    assert (tied >= flag_threshold(tied, 0.2)).sum() == 3
    with pytest.raises(ValueError, match="all 4 scores are equal"):
        flag_threshold(np.full(4, 0.5), 0.5)


def test_config_refuses_sizes_the_demo_records_cannot_fill() -> None:
    with pytest.raises(ValueError, match="at least 100"):
        ScoreBenchConfig(memory_sizes=(20, 1000))
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        ScoreBenchConfig(flag_share=1.5)


def test_end_to_end_scoring_flags_scores_at_or_above_threshold(sqlite_url: str) -> None:
    model, tokenizer = load_base_model("tiny-random", seed=3)
    frame = unlabelled_demo_frame(250, seed=3)
    frame.loc[frame.index[:4], "text"] = ["", "   ", None, ""]
    engine, mapping = prepared_engine(sqlite_url), records_mapping()
    seed_records(engine, mapping, frame)
    texts = frame["text"].iloc[4:].tolist()
    scores = predict_scores(model, tokenizer, texts, max_length=64)
    scorer = Scorer(model, tokenizer, flag_threshold(scores, 0.1), 64, 16)
    version = new_model_version(engine, "test")
    summary = score_id_range(scorer, engine, mapping, version_id=version, id_range=None,
                             chunk_size=60)
    assert summary.scored == len(texts) and summary.skipped == 4
    assert summary.flags_written == summary.flagged == 25
    assert summary.flagged == int((scores >= scorer.threshold).sum())
    with session_scope(engine) as session:
        assert repo.count_scores(session=session, model_version_id=version) == len(frame)
        assert repo.count_flags(session=session, model_version_id=version) == 25
    again = score_id_range(scorer, engine, mapping, version_id=version, id_range=None,
                           chunk_size=60)
    # A rerun for the same version finds nothing left to score and stores nothing twice.
    assert (again.scored, again.flags_written) == (0, 0)


def test_benchmark_and_scoring_task_run_one_function() -> None:
    # The figures measure the path the scoring flow runs, not a copy of it.
    assert bench_scoring.score_id_range is tasks.scoring.score_id_range is score_id_range


def test_command_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    app = typer.Typer()
    app.command()(bench_score_command)
    outcome = CliRunner().invoke(app, [
        "--json", str(out), "--flag-rows", "300", "--skip-postgres", "--score-rows", "200",
        "--base-model", "tiny-random", "--chunk-size", "80", "--repeats", "1",
        "--memory-sizes", "200,400", "--threads", "1",
    ])
    assert outcome.exit_code == 0, outcome.output
    assert "bench-score" in outcome.output
    result = json.loads(out.read_text())
    assert set(result["flag_writes"]) == {"sqlite"}
    assert set(FLAG_KEYS) <= set(result["flag_writes"]["sqlite"])
    scoring = result["scoring"]
    assert set(SCORING_KEYS) <= set(scoring)
    for key in ("model_only_rows_per_s", "e2e_rows_per_s", "ratio"):
        assert _positive(scoring[key]), key
    assert scoring["flags_written"] == scoring["e2e_flagged"] == scoring["model_only_flagged"]
    assert scoring["flags_written"] == 10  # 5% of 200 records
    runs = result["memory"]["runs"]
    assert [run["rows"] for run in runs] == [200, 400]
    for run in runs:
        assert set(MEMORY_KEYS) <= set(run)
        assert run["scored"] == run["rows"] and run["flags_written"] > 0
        assert run["peak_mb"] >= max(run["peak_before_scoring_mb"], run["scoring_peak_mb"])
        assert run["scoring_peak_mb"] > 0 and run["rss_before_scoring_mb"] > 0
    assert _positive(result["memory"]["peak_ratio"])
    assert set(result["reached"]) == {"flag_speedup_sqlite", "e2e_ratio", "memory_peak_ratio"}


@pytest.mark.postgres
def test_postgres_flag_writes_go_to_the_given_database_and_leave_nothing(
        postgres_url: str, tmp_path: Path) -> None:
    engine = prepared_engine(postgres_url)
    with session_scope(engine) as session:  # a version of another model must survive
        session.add(ModelVersion(model_name="kept", version=1, status="candidate",
                                 base_model="-", artifact_uri="-", weights_sha256="-",
                                 data_fingerprint="-", hyperparameters={}, metrics={},
                                 threshold=0.5))
    out = tmp_path / "bench.json"
    app = typer.Typer()
    app.command()(bench_score_command)
    outcome = CliRunner().invoke(app, [
        "--json", str(out), "--postgres-url", postgres_url, "--flag-rows", "200",
        "--score-rows", "100", "--base-model", "tiny-random", "--repeats", "1",
        "--memory-sizes", "100", "--threads", "1",
    ])
    assert outcome.exit_code == 0, outcome.output
    figures = json.loads(out.read_text())["flag_writes"]["postgresql"]
    assert figures["bulk_rows"] == figures["orm_rows"] == 200
    with session_scope(engine) as session:
        names = session.scalars(sa.select(ModelVersion.model_name)).all()
        assert names == ["kept"] and repo.count_flags(session=session) == 0


def test_unreachable_postgres_is_one_error_line(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(bench_score_command)
    outcome = CliRunner().invoke(app, [
        "--postgres-url", "postgresql+psycopg://nobody@127.0.0.1:1/none", "--flag-rows", "10",
        "--score-rows", "100", "--memory-sizes", "100", "--base-model", "tiny-random",
    ])
    assert outcome.exit_code == 1
    assert "error:" in outcome.output and "--skip-postgres" in outcome.output
    assert "Traceback" not in outcome.output
