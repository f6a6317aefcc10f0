"""Benchmark of the scoring path: how flags are written, what the database adds to scoring,
and how memory grows with the number of records scored.

Three parts, each against its own reference:

1. flag writes: `db.repository.insert_flags` (multi-row INSERT ... ON CONFLICT DO NOTHING)
   against the naive ORM pattern (one `Flag` object added and flushed per row, one commit),
   on SQLite and on PostgreSQL;
2. end-to-end scoring with `tasks.scoring.score_id_range`, what the scoring flow runs
   per id range (read unlabelled records in chunks, score, write scores and flags, commit
   per chunk), against `predict_scores` on the same texts already in memory;
3. peak memory of the streaming scorer at two table sizes, each in a fresh process.

The database functions are called directly, not through the Prefect flow, so the figures
measure anomdet's own work and nothing of the orchestrator. PostgreSQL figures are taken
in the database that --postgres-url names; the benchmark's own rows are removed after.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
import torch
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import Engine

from anomdet.demo import generate_demo_records
from anomdet.device import configure_threads, pick_device
from anomdet.encoder import TRANSFORMERS_DEFAULTS, load_base_model, quiet_transformers
from anomdet.inference import predict_scores
from anomdet.scoring import Scorer, ScoreSummary
from anomdet.settings import RecordsSettings
from bench import report_console
from db import repository as repo
from db.engine import get_engine, migrate, session_scope
from db.models import Flag, ModelVersion, Score, utcnow
from db.records import RecordsMapping, ensure_records_table, reflect_records_table, upsert_records
from tasks.scoring import score_id_range

logger = logging.getLogger(__name__)

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BENCH_MODEL_NAME = "bench-score"
# Demo records are generated and upserted this many at a time, so seeding a large table
# holds only one batch in memory.
SEED_BATCH = 10_000
# Texts scored in memory to place the threshold before the memory probe starts.
THRESHOLD_SAMPLE = 1_000
GOAL_FLAG_SPEEDUP = 20.0
GOAL_E2E_RATIO = 0.85
GOAL_MEMORY_GROWTH = 1.2

Note = Callable[[str], None]


@dataclass(frozen=True)
class ScoreBenchConfig:
    """What the benchmark runs; every size can be shrunk for a quick check."""

    flag_rows: int = 20_000
    orm_rows: int | None = None
    postgres_url: str | None = None
    skip_postgres: bool = False
    score_rows: int = 3_000
    base_model: str = "bundled"
    chunk_size: int = 1_000
    batch_size: int = 64
    max_length: int = 128
    repeats: int = 3
    flag_share: float = 0.05
    memory_sizes: tuple[int, ...] = (20_000, 200_000)
    memory_base_model: str = "tiny-random"
    seed: int = 7
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.flag_rows < 1 or (self.orm_rows is not None and self.orm_rows < 1):
            raise ValueError(f"flag_rows={self.flag_rows} and orm_rows={self.orm_rows} must be "
                             "at least 1; pass --flag-rows/--orm-rows of 1 or more")
        if self.score_rows < 100 or any(size < 100 for size in self.memory_sizes):
            raise ValueError(f"score_rows={self.score_rows} and memory_sizes="
                             f"{list(self.memory_sizes)} must each be at least 100 (the demo "
                             "records need that many rows); raise --score-rows/--memory-sizes")
        if not 0 < self.flag_share < 1:
            raise ValueError(f"flag_share={self.flag_share} must lie strictly between 0 and 1 "
                             "(e.g. 0.05 to flag the top 5%)")
        if self.repeats < 1:
            raise ValueError(f"repeats={self.repeats} must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads} must be at least 1, or None for every core")

    @property
    def orm_row_count(self) -> int:
        """Rows the ORM side writes: `orm_rows`, or as many as the bulk side."""
        return self.orm_rows if self.orm_rows is not None else self.flag_rows


@dataclass(frozen=True)
class FlagWriteFigures:
    """Bulk against row-by-row ORM flag writes on one backend; seconds include the commit."""

    backend: str
    bulk_rows: int
    bulk_seconds: list[float]
    orm_rows: int
    orm_seconds: float

    @property
    def bulk_rows_per_s(self) -> float:
        return self.bulk_rows / statistics.median(self.bulk_seconds)

    @property
    def orm_rows_per_s(self) -> float:
        return self.orm_rows / self.orm_seconds

    @property
    def speedup(self) -> float:
        return self.bulk_rows_per_s / self.orm_rows_per_s

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"bulk_rows_per_s": self.bulk_rows_per_s,
                               "orm_rows_per_s": self.orm_rows_per_s, "speedup": self.speedup}


@dataclass(frozen=True)
class ScoringFigures:
    """End-to-end scoring against model-only scoring of the same texts, median of repeats."""

    base_model: str
    rows: int
    chunk_size: int
    batch_size: int
    max_length: int
    threads: int
    threshold: float
    model_only_flagged: int
    e2e_flagged: int
    flags_written: int
    model_only_seconds: list[float] = field(default_factory=list)
    e2e_seconds: list[float] = field(default_factory=list)

    @property
    def model_only_rows_per_s(self) -> float:
        return self.rows / statistics.median(self.model_only_seconds)

    @property
    def e2e_rows_per_s(self) -> float:
        return self.rows / statistics.median(self.e2e_seconds)

    @property
    def ratio(self) -> float:
        return self.e2e_rows_per_s / self.model_only_rows_per_s

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"model_only_rows_per_s": self.model_only_rows_per_s,
                               "e2e_rows_per_s": self.e2e_rows_per_s, "ratio": self.ratio}


@dataclass(frozen=True)
class MemoryFigures:
    """One streaming-scoring run in a fresh process: its memory before and during scoring.

    `scoring_peak_mb` is the high-water mark of the scoring phase alone when the kernel
    lets it be reset (`peak_reset`), else the process's peak so far; `peak_mb` is the peak
    of the whole process; `ru_maxrss_mb` is what getrusage says, kept for comparison.
    """

    rows: int
    base_model: str
    chunk_size: int
    seed_seconds: float
    score_seconds: float
    scored: int
    flags_written: int
    rss_before_scoring_mb: float
    peak_before_scoring_mb: float
    scoring_peak_mb: float
    peak_mb: float
    peak_reset: bool
    ru_maxrss_mb: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- databases --------------------------------------------------------------------------------

@contextmanager
def temporary_sqlite() -> Iterator[str]:
    """The URL of a SQLite file in a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="anomdet-bench-") as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        try:
            yield url
        finally:
            get_engine(url).dispose()


def prepared_engine(url: str) -> Engine:
    """The shared engine for `url`, with anomdet's tables migrated."""
    engine = get_engine(url)
    try:
        migrate(engine)
    except sa.exc.OperationalError as exc:
        shown = sa.engine.make_url(url).render_as_string(hide_password=True)
        raise ValueError(
            f"the database at {shown} is unreachable ({str(exc.orig).strip()}); start it, "
            "point --postgres-url at a database the benchmark may write to, or pass "
            "--skip-postgres") from exc
    return engine


def remove_bench_versions(engine: Engine) -> int:
    """Delete the benchmark's model versions with their flags and scores; returns how many
    versions went. Nothing of any other model is touched."""
    versions = sa.select(ModelVersion.id).where(ModelVersion.model_name == BENCH_MODEL_NAME)
    with session_scope(engine) as session:
        for table in (Flag, Score):
            session.execute(sa.delete(table).where(table.model_version_id.in_(versions)))
        removed = session.execute(
            sa.delete(ModelVersion).where(ModelVersion.model_name == BENCH_MODEL_NAME))
    return max(0, removed.rowcount)


def new_model_version(engine: Engine, label: str) -> int:
    """A fresh candidate version to hang flags on, so every timed write really inserts."""
    with session_scope(engine) as session:
        number = repo.next_version_number(session=session, model_name=BENCH_MODEL_NAME)
        version = ModelVersion(
            model_name=BENCH_MODEL_NAME, version=number, status="candidate", base_model=label,
            artifact_uri="-", weights_sha256="-", data_fingerprint="-", hyperparameters={},
            metrics={}, threshold=0.5,
        )
        session.add(version)
        session.flush()
        return version.id


# --- part 1: flag writes ----------------------------------------------------------------------

def synthetic_flag_rows(n: int, *, seed: int) -> list[dict[str, Any]]:
    """`n` flag rows with distinct record ids and scores above a 0.5 threshold."""
    scores = np.random.default_rng(seed).uniform(0.5, 1.0, size=n)
    return [{"record_id": str(i), "score": float(s), "threshold": 0.5, "run_id": None}
            for i, s in enumerate(scores.tolist(), start=1)]


def time_bulk_flags(engine: Engine, version_id: int, rows: Sequence[dict[str, Any]]) -> float:
    """Seconds to write `rows` with `insert_flags` and commit."""
    start = time.perf_counter()
    with session_scope(engine) as session:
        written = repo.insert_flags(session=session, model_version_id=version_id, rows=rows)
    seconds = time.perf_counter() - start
    _check_written("bulk", written, len(rows))
    return seconds


def time_orm_flags(engine: Engine, version_id: int, rows: Sequence[dict[str, Any]]) -> float:
    """Seconds to write `rows` the naive way: add and flush one `Flag` per row, then commit."""
    start = time.perf_counter()
    with session_scope(engine) as session:
        now = utcnow()
        for row in rows:
            session.add(Flag(record_id=row["record_id"], model_version_id=version_id,
                             score=row["score"], threshold=row["threshold"],
                             run_id=row["run_id"], flagged_at=now))
            session.flush()
    seconds = time.perf_counter() - start
    with session_scope(engine) as session:
        _check_written("ORM", repo.count_flags(session=session, model_version_id=version_id),
                       len(rows))
    return seconds


def _check_written(how: str, written: int, expected: int) -> None:
    # A write path that silently skipped rows would look fast for the wrong reason.
    if written != expected:
        raise RuntimeError(f"{how} flag write stored {written} rows instead of {expected}")


def bench_flag_writes(url: str, backend: str, config: ScoreBenchConfig) -> FlagWriteFigures:
    """Bulk writes (median of `repeats`, fresh version each) against one ORM pass."""
    engine = prepared_engine(url)
    rows = synthetic_flag_rows(max(config.flag_rows, config.orm_row_count), seed=config.seed)
    # Warm the connection pool and statement caches so neither side pays for the first connect.
    time_bulk_flags(engine, new_model_version(engine, "warm-up"), rows[:10])
    bulk = [time_bulk_flags(engine, new_model_version(engine, "bulk"), rows[:config.flag_rows])
            for _ in range(config.repeats)]
    orm = time_orm_flags(engine, new_model_version(engine, "orm"), rows[:config.orm_row_count])
    return FlagWriteFigures(backend=backend, bulk_rows=config.flag_rows, bulk_seconds=bulk,
                            orm_rows=config.orm_row_count, orm_seconds=orm)


# --- part 2: end-to-end scoring ---------------------------------------------------------------

def flag_threshold(scores: np.ndarray, share: float) -> float:
    """A threshold that flags about the top `share` of `scores`.

    It sits halfway between two distinct neighbouring scores rather than on a score,
    so rounding noise between two scoring passes cannot move a record across it.
    """
    values, counts = np.unique(np.asarray(scores, dtype=np.float64), return_counts=True)
    if values.size < 2:
        raise ValueError(f"cannot place a threshold: all {len(scores)} scores are equal "
                         f"({values[0] if values.size else 'none'}); the model gives no ranking")
    values, counts = values[::-1], counts[::-1]
    at_or_above = np.cumsum(counts)  # how many scores are >= each distinct value
    wanted = max(1, round(share * len(scores)))
    # The lowest distinct value whose count stays within the wanted number; ties at the top
    # can make even the highest value exceed it, and then those are what is flagged.
    cut = int(np.searchsorted(at_or_above, wanted, side="right")) - 1
    cut = min(max(cut, 0), values.size - 2)
    return float((values[cut] + values[cut + 1]) / 2)


def unlabelled_demo_frame(n: int, *, seed: int, first_id: int = 1) -> pd.DataFrame:
    """`n` demo records (ids from `first_id`) with every label removed, ready to score."""
    frame = generate_demo_records(max(n, 100), seed=seed).head(n)
    # Microseconds are all a database timestamp keeps; dropping the rest here spares a
    # warning per value on the way in.
    return frame.assign(id=frame["id"] + (first_id - 1), label=pd.NA,
                        created_at=frame["created_at"].dt.floor("us"))


def seed_records(engine: Engine, mapping: RecordsMapping, frame: pd.DataFrame) -> None:
    """Create the records table if needed and upsert `frame` into it in one transaction."""
    ensure_records_table(engine, mapping)
    with engine.begin() as conn:
        upsert_records(conn, reflect_records_table(conn, mapping), mapping, frame)


def set_threads(threads: int | None) -> int:
    """Torch's intra-op threads: `threads`, or every core as the scoring flow uses."""
    if threads is None:
        return configure_threads()
    torch.set_num_threads(threads)
    return threads


def _load_scorer(config: ScoreBenchConfig, base_model: str) -> Scorer:
    model, tokenizer = load_base_model(base_model, seed=config.seed)
    model.to(pick_device()).eval()
    # The threshold is placed once scores exist; 0.5 is only a placeholder until then.
    return Scorer(model, tokenizer, 0.5, config.max_length, config.batch_size)


def _model_only(scorer: Scorer, texts: list[str]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    scores = predict_scores(scorer.model, scorer.tokenizer, texts, batch_size=scorer.batch_size,
                            max_length=scorer.max_length)
    return scores, time.perf_counter() - start


def _end_to_end(engine: Engine, mapping: RecordsMapping, scorer: Scorer,
                chunk_size: int) -> tuple[ScoreSummary, float]:
    # A fresh version each time: every record is work, as for a newly promoted champion.
    version_id = new_model_version(engine, "e2e")
    start = time.perf_counter()
    summary = score_id_range(scorer, engine, mapping, version_id=version_id, id_range=None,
                             chunk_size=chunk_size)
    return summary, time.perf_counter() - start


def bench_scoring(url: str, config: ScoreBenchConfig) -> ScoringFigures:
    """Model-only and end-to-end passes over the same records, alternating, `repeats` each."""
    threads = set_threads(config.threads)
    scorer = _load_scorer(config, config.base_model)
    frame = unlabelled_demo_frame(config.score_rows, seed=config.seed)
    texts = frame["text"].tolist()
    mapping = RecordsSettings().mapping()
    engine = prepared_engine(url)
    seed_records(engine, mapping, frame)
    # A few untimed batches warm the model; the first timed pass then places the threshold.
    _model_only(scorer, texts[: 4 * config.batch_size])
    model_seconds, e2e_seconds = [], []
    for _ in range(config.repeats):
        scores, seconds = _model_only(scorer, texts)
        model_seconds.append(seconds)
        if not e2e_seconds:
            scorer = replace(scorer, threshold=flag_threshold(scores, config.flag_share))
        summary, seconds = _end_to_end(engine, mapping, scorer, config.chunk_size)
        e2e_seconds.append(seconds)
    return ScoringFigures(
        base_model=config.base_model, rows=len(texts), chunk_size=config.chunk_size,
        batch_size=config.batch_size, max_length=config.max_length, threads=threads,
        threshold=scorer.threshold, model_only_flagged=int((scores >= scorer.threshold).sum()),
        e2e_flagged=summary.flagged, flags_written=summary.flags_written,
        model_only_seconds=model_seconds,
        e2e_seconds=e2e_seconds,
    )


# --- part 3: memory -----------------------------------------------------------------------------

def _proc_status_mb(name: str) -> float | None:
    """A memory line of /proc/self/status (e.g. VmRSS) in MiB, or None off Linux."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) / 2**10
    return None


def ru_maxrss_mb() -> float:
    """Peak resident memory by getrusage, in MiB.

    On Linux it also carries the peak of the process image replaced by exec, so a child
    started by a large parent reports at least the parent's size: `peak_rss_mb` avoids that.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in bytes on macOS and in KiB on Linux.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def current_rss_mb() -> float:
    """Resident memory of this process now, in MiB (the peak so far where /proc is missing)."""
    rss = _proc_status_mb("VmRSS")
    return rss if rss is not None else ru_maxrss_mb()


def peak_rss_mb() -> float:
    """High-water mark of resident memory of this process image, in MiB."""
    peak = _proc_status_mb("VmHWM")
    return peak if peak is not None else ru_maxrss_mb()


def reset_peak_rss() -> bool:
    """Restart the high-water mark from the current RSS (Linux clear_refs); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _seed_in_batches(engine: Engine, mapping: RecordsMapping, rows: int, seed: int) -> None:
    for first in range(1, rows + 1, SEED_BATCH):
        size = min(SEED_BATCH, rows - first + 1)
        seed_records(engine, mapping, unlabelled_demo_frame(size, seed=seed + first,
                                                            first_id=first))


def memory_probe(rows: int, *, base_model: str, chunk_size: int, seed: int,
                 threads: int | None, url: str) -> MemoryFigures:
    """Seed `rows` unlabelled records at `url`, then score them all, watching memory.

    Meant to run alone in a fresh process: the peak it reports is that process's peak.
    """
    config = ScoreBenchConfig(base_model=base_model, chunk_size=chunk_size, seed=seed,
                              memory_sizes=(rows,), threads=threads)
    set_threads(threads)
    scorer = _load_scorer(config, base_model)
    sample = unlabelled_demo_frame(min(rows, THRESHOLD_SAMPLE), seed=seed)["text"].tolist()
    scores, _ = _model_only(scorer, sample)
    scorer = replace(scorer, threshold=flag_threshold(scores, config.flag_share))
    mapping, engine = RecordsSettings().mapping(), prepared_engine(url)
    start = time.perf_counter()
    _seed_in_batches(engine, mapping, rows, seed)
    seed_seconds = time.perf_counter() - start
    del scores, sample
    gc.collect()
    before, peak_before = current_rss_mb(), peak_rss_mb()
    # Seeding and set-up may peak higher than scoring; restarting the mark here makes the
    # peak read afterwards the scoring phase's own.
    reset = reset_peak_rss()
    summary, score_seconds = _end_to_end(engine, mapping, scorer, chunk_size)
    scoring_peak = peak_rss_mb()
    return MemoryFigures(
        rows=rows, base_model=base_model, chunk_size=chunk_size, seed_seconds=seed_seconds,
        score_seconds=score_seconds, scored=summary.scored, flags_written=summary.flags_written,
        rss_before_scoring_mb=before, peak_before_scoring_mb=peak_before,
        scoring_peak_mb=scoring_peak, peak_mb=max(peak_before, scoring_peak), peak_reset=reset,
        ru_maxrss_mb=ru_maxrss_mb(),
    )


def _probe_main(arguments: str) -> None:
    """Entry point of the probe process: JSON arguments in, JSON figures on the last line."""
    kwargs = json.loads(arguments)
    with temporary_sqlite() as url:
        figures = memory_probe(url=url, **kwargs)
    print(json.dumps(figures.as_dict()))


_PROBE_CODE = "import sys\nfrom bench.scoring import _probe_main\n_probe_main(sys.argv[1])"


def measure_memory(rows: int, config: ScoreBenchConfig) -> MemoryFigures:
    """Run `memory_probe` for `rows` records in a fresh Python process and read its figures."""
    arguments = json.dumps({"rows": rows, "base_model": config.memory_base_model,
                            "chunk_size": config.chunk_size, "seed": config.seed,
                            "threads": config.threads})
    root = str(Path(__file__).resolve().parents[1])
    env = TRANSFORMERS_DEFAULTS | os.environ | {"PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", _PROBE_CODE, arguments], capture_output=True,
                          text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe for {rows} rows failed (exit {done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    return MemoryFigures(**json.loads(done.stdout.strip().splitlines()[-1]))


# --- the whole benchmark ----------------------------------------------------------------------

def _flag_part(config: ScoreBenchConfig, note: Note) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    note(f"flag writes on SQLite: {config.flag_rows} bulk x{config.repeats}, "
         f"{config.orm_row_count} ORM")
    with temporary_sqlite() as url:
        figures["sqlite"] = bench_flag_writes(url, "sqlite", config).as_dict()
    if not config.skip_postgres:
        url = config.postgres_url or DEFAULT_POSTGRES_URL
        note(f"flag writes on PostgreSQL at "
             f"{sa.engine.make_url(url).render_as_string(hide_password=True)}")
        engine = prepared_engine(url)
        try:
            figures["postgresql"] = bench_flag_writes(url, "postgresql", config).as_dict()
        finally:
            remove_bench_versions(engine)
    return figures


def _memory_part(config: ScoreBenchConfig, note: Note) -> dict[str, Any]:
    runs = []
    for rows in config.memory_sizes:
        note(f"memory: streaming scorer over {rows} records in a fresh process")
        runs.append(measure_memory(rows, config).as_dict())
    smallest, largest = runs[0], runs[-1]
    return {"runs": runs,
            "peak_ratio": largest["scoring_peak_mb"] / smallest["scoring_peak_mb"],
            "process_peak_ratio": largest["peak_mb"] / smallest["peak_mb"],
            "scoring_growth_mb": [run["scoring_peak_mb"] - run["rss_before_scoring_mb"]
                                  for run in runs]}


def goals(result: dict[str, Any]) -> dict[str, bool]:
    """Whether each target is met by the figures in `result`."""
    reached = {f"flag_speedup_{backend}": figures["speedup"] >= GOAL_FLAG_SPEEDUP
               for backend, figures in result["flag_writes"].items()}
    reached["e2e_ratio"] = result["scoring"]["ratio"] >= GOAL_E2E_RATIO
    if len(result["memory"]["runs"]) > 1:
        reached["memory_peak_ratio"] = result["memory"]["peak_ratio"] <= GOAL_MEMORY_GROWTH
    return reached


def run_score_benchmark(config: ScoreBenchConfig, note: Note | None = None) -> dict[str, Any]:
    """All three parts; figures as a JSON-ready dict with the goals and their verdicts."""
    note = note or logger.info
    started = time.perf_counter()
    result: dict[str, Any] = {"config": asdict(config)}
    result["flag_writes"] = _flag_part(config, note)
    note(f"end-to-end scoring of {config.score_rows} records with {config.base_model!r}, "
         f"{config.repeats} alternating rounds")
    with temporary_sqlite() as url:
        result["scoring"] = bench_scoring(url, config).as_dict()
    result["memory"] = _memory_part(config, note)
    result["goals"] = {"flag_speedup_min": GOAL_FLAG_SPEEDUP, "e2e_ratio_min": GOAL_E2E_RATIO,
                       "memory_peak_ratio_max": GOAL_MEMORY_GROWTH}
    result["reached"] = goals(result)
    result["seconds"] = time.perf_counter() - started
    return result


# --- presentation -------------------------------------------------------------------------------

def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else "[green]yes[/]" if ok else "[red]no[/]"


def _flag_rows_table(table: Table, result: dict[str, Any]) -> None:
    for backend, f in result["flag_writes"].items():
        orm_note = "" if f["orm_rows"] == f["bulk_rows"] else f" ({f['orm_rows']} rows)"
        table.add_row(f"flag writes, {backend}: rows/s", f"{f['bulk_rows_per_s']:,.0f}",
                      f"{f['orm_rows_per_s']:,.0f}", f"ORM add+flush per row{orm_note}",
                      f"{f['speedup']:.1f}x", f">= {GOAL_FLAG_SPEEDUP:g}x",
                      _verdict(result["reached"][f"flag_speedup_{backend}"]))


def results_table(result: dict[str, Any]) -> Table:
    """The headline figures with their references, ratios and goals."""
    table = Table(title=f"anomdet bench-score ({result['seconds']:.0f} s)")
    for column in ("measure", "anomdet", "reference", "reference is", "ratio", "goal", "met"):
        table.add_column(column, justify="left" if column in ("measure", "reference is")
                         else "right")
    _flag_rows_table(table, result)
    s = result["scoring"]
    table.add_row(f"scoring {s['rows']} records: rows/s", f"{s['e2e_rows_per_s']:,.1f}",
                  f"{s['model_only_rows_per_s']:,.1f}", "predict_scores on texts in memory",
                  f"{s['ratio']:.3f}", f">= {GOAL_E2E_RATIO:g}",
                  _verdict(result["reached"]["e2e_ratio"]))
    runs = result["memory"]["runs"]
    for run in runs:
        table.add_row(f"scoring peak RSS, {run['rows']:,} records: MiB",
                      f"{run['scoring_peak_mb']:,.0f}", f"{run['rss_before_scoring_mb']:,.0f}",
                      "RSS just before scoring",
                      f"{run['scoring_peak_mb'] / run['rss_before_scoring_mb']:.2f}", "", "")
    if len(runs) > 1:
        table.add_row(f"scoring peak {runs[-1]['rows']:,} / {runs[0]['rows']:,}", "", "", "",
                      f"{result['memory']['peak_ratio']:.3f}", f"<= {GOAL_MEMORY_GROWTH:g}",
                      _verdict(result["reached"].get("memory_peak_ratio")))
    return table


def _detail_lines(result: dict[str, Any]) -> list[str]:
    s = result["scoring"]
    lines = [f"scoring: threshold {s['threshold']:.6f} flagged {s['e2e_flagged']} of {s['rows']}"
             f" end to end ({s['flags_written']} flag rows written; model-only "
             f"{s['model_only_flagged']}); {s['threads']} threads, chunks of {s['chunk_size']},"
             f" median of {len(s['e2e_seconds'])} alternating rounds"]
    for backend, f in result["flag_writes"].items():
        lines.append(f"flag writes, {backend}: bulk median of {len(f['bulk_seconds'])} runs of "
                     f"{f['bulk_rows']} rows; ORM one run of {f['orm_rows']} rows, "
                     f"rates per row")
    for run in result["memory"]["runs"]:
        lines.append(f"memory, {run['rows']} records: seeded in {run['seed_seconds']:.1f} s, "
                     f"scored {run['scored']} in {run['score_seconds']:.1f} s, "
                     f"{run['flags_written']} flags; process peak before scoring "
                     f"{run['peak_before_scoring_mb']:.0f} MiB, whole process "
                     f"{run['peak_mb']:.0f} MiB, getrusage {run['ru_maxrss_mb']:.0f} MiB; "
                     f"scoring peak {'measured alone' if run['peak_reset'] else 'not separable'}")
    return lines


def _memory_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of whole numbers, "
                                 "e.g. 20000,200000") from exc
    if not sizes:
        raise typer.BadParameter("give at least one size, e.g. 20000,200000")
    return sizes


def bench_score_command(
    json_out: Path | None = typer.Option(None, "--json", help="also write the figures here"),
    flag_rows: int = typer.Option(20_000, min=1, help="flag rows per bulk write"),
    orm_rows: int | None = typer.Option(None, min=1,
                                        help="flag rows for the ORM side (default: --flag-rows)"),
    postgres_url: str | None = typer.Option(
        None, help="PostgreSQL database of the flag writes; anomdet's tables are created there "
                   "if missing, and the benchmark's own rows are removed afterwards "
                   f"(default: {DEFAULT_POSTGRES_URL})"),
    skip_postgres: bool = typer.Option(False, "--skip-postgres", help="flag writes on SQLite only"),
    score_rows: int = typer.Option(3_000, min=100, help="records scored end to end"),
    base_model: str = typer.Option("bundled", help="model of the scoring part"),
    chunk_size: int = typer.Option(1_000, min=1, help="records per database read"),
    batch_size: int = typer.Option(64, min=1, help="texts per model call"),
    repeats: int = typer.Option(3, min=1, help="rounds of each timed measurement"),
    flag_share: float = typer.Option(0.05, min=0.0001, max=0.9999,
                                     help="share of records the threshold flags"),
    memory_sizes: str = typer.Option("20000,200000", help="record counts of the memory runs"),
    memory_base_model: str = typer.Option("tiny-random", help="model of the memory runs"),
    seed: int = typer.Option(7, help="seed of the demo records, flags and models"),
    threads: int | None = typer.Option(
        None, min=1, help="torch threads (default: every core, as the scoring flow uses)"),
) -> None:
    """Measure flag writes, end-to-end scoring overhead and the streaming scorer's memory."""
    quiet_transformers()
    console = report_console()
    try:
        config = ScoreBenchConfig(
            flag_rows=flag_rows, orm_rows=orm_rows, postgres_url=postgres_url,
            skip_postgres=skip_postgres, score_rows=score_rows, base_model=base_model,
            chunk_size=chunk_size, batch_size=batch_size, repeats=repeats,
            flag_share=flag_share, memory_sizes=_memory_sizes(memory_sizes),
            memory_base_model=memory_base_model, seed=seed, threads=threads)
        result = run_score_benchmark(config, note=lambda m: console.log(m, highlight=False))
    except ValueError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    console.print(results_table(result))
    for line in _detail_lines(result):
        console.print(line, highlight=False)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2, default=float) + "\n")
        console.print(f"figures written to {json_out}")


if __name__ == "__main__":
    typer.run(bench_score_command)
