"""Benchmark at table scale, on PostgreSQL with the `tiny-random` model: what a promotion
and the reads users make cost as the records table grows.

For each size it makes a scratch database on the server that --postgres-url names, fills
a records table (`--labelled` of them labelled, the rest to score), and measures:

1. a first `anomdet retrain` in its own process: wall time and peak RSS (its promotion
   backfills every unlabelled record before the flip);
2. the backfill of a candidate version over every unlabelled record, through the
   `backfill` flow on local Dask clusters of 1 and 2 workers: rows per second;
3. the flip that makes a backfilled candidate champion: milliseconds (median of 5 flips);
4. incremental scoring after 1% new records arrive (with ids below and above the
   others): `anomdet score` in its own process, wall time and peak RSS;
5. reads of `anomdet_flagged`: the top 10 by score and one record by id, in milliseconds
   (median of 7), and whether the plan uses indexes only;
6. the extraction of a table of as many labelled records (5% anomalous), in a fresh process
   each: all of them, and the stratified sample that `--max-train-rows` draws in SQL, with
   the peak RSS of each.

It runs the project's own flows and commands, not copies of them. The scratch database is
dropped afterwards.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table

from bench import report_console

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SCRATCH_DATABASE = "anomdet_bench_scale"
TOP10 = "SELECT * FROM anomdet_flagged ORDER BY score DESC LIMIT 10"
BY_ID = "SELECT * FROM anomdet_flagged WHERE record_id = :key"
GOALS = {"flip_ratio_max": 1.5, "backfill_ratio_min": 0.8, "read_ms_max": 50.0}
# Texts of the unlabelled records, cycled: tokenising and scoring cost what real short
# log lines cost; the model's verdicts do not matter here.
LINES = ("user {n} logged in from host {h}", "payment {n} failed: card declined at gateway {h}",
         "disk usage on node {h} at {p} percent", "request {n} timed out after {p} ms",
         "session {n} closed by user", "backup job {n} finished on host {h}")


@dataclass(frozen=True)
class ScaleConfig:
    postgres_url: str
    rows: tuple[int, ...]
    labelled: int
    chunks: int
    dask_workers: tuple[int, ...]
    seed: int
    max_train_rows: int = 5000


def _scratch(admin_url: str) -> str:
    """Create an empty scratch database beside --postgres-url's; its URL."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{SCRATCH_DATABASE}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{SCRATCH_DATABASE}"'))
    except sa.exc.OperationalError as exc:
        shown = sa.engine.make_url(admin_url).render_as_string(hide_password=True)
        raise ValueError(f"the PostgreSQL server at {shown} is unreachable "
                         f"({str(exc.orig).strip()}); start it or point --postgres-url at one "
                         "where the benchmark may create a database") from exc
    finally:
        admin.dispose()
    url = sa.engine.make_url(admin_url).set(database=SCRATCH_DATABASE)
    return url.render_as_string(hide_password=False)


def _drop_scratch(admin_url: str) -> None:
    from db.engine import get_engine

    get_engine.cache_clear()
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{SCRATCH_DATABASE}" WITH (FORCE)'))
    admin.dispose()


def _fill(url: str, rows: int, labelled: int, seed: int) -> None:
    """`records`: `labelled` demo records with their labels, then unlabelled log lines."""
    from anomdet.demo import generate_demo_records

    demo = generate_demo_records(labelled, anomaly_rate=0.1, labelled_fraction=1.0, seed=seed)
    engine = sa.create_engine(url)
    cases = " ".join(f"WHEN {i} THEN '{line}'" for i, line in enumerate(LINES))
    text = (f"replace(replace(replace(CASE g % {len(LINES)} {cases} END, '{{n}}', g::text), "
            "'{h}', (g % 251)::text), '{p}', (g % 97)::text)")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE records (id BIGINT PRIMARY KEY, text TEXT, "
                             "label SMALLINT, created_at TIMESTAMPTZ)"))
        conn.execute(sa.text("INSERT INTO records VALUES (:id, :text, :label, now())"),
                     [{"id": i + 1, "text": t, "label": int(y)}
                      for i, (t, y) in enumerate(zip(demo["text"], demo["label"], strict=True))])
        conn.execute(sa.text(f"INSERT INTO records SELECT g, {text}, NULL, now() "
                             f"FROM generate_series({labelled + 1}, {rows}) g"))
        conn.execute(sa.text("ANALYZE records"))
    engine.dispose()


# The peak RSS of a process is its memory's high-water mark (VmHWM), which starts afresh
# at exec; ru_maxrss would not do: Linux carries it over from the parent at fork.
_PEAK_AT_EXIT = """
import atexit, os, re, runpy, sys
def _peak():
    status = open("/proc/self/status").read()
    with open(os.environ["BENCH_SCALE_PEAK_FILE"], "w") as out:
        out.write(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
atexit.register(_peak)
sys.argv = ["anomdet", *sys.argv[1:]]
runpy.run_module("cli", run_name="__main__")
"""


def _run_command(args: Sequence[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run an anomdet command in its own process: wall seconds, peak RSS in MB, output."""
    with tempfile.TemporaryDirectory() as folder:
        peak_file = Path(folder) / "peak"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _PEAK_AT_EXIT, *args],
                              env=env | {"BENCH_SCALE_PEAK_FILE": str(peak_file)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        seconds = time.perf_counter() - start
        output = done.stdout.decode(errors="replace")
        if done.returncode != 0 or not peak_file.exists():
            raise RuntimeError(f"anomdet {' '.join(args)} failed ({done.returncode}): "
                               f"{output[-2000:]}")
        return seconds, int(peak_file.read_text()) / 1024, output


def _champion(url: str) -> Any:
    from db import repository as repo
    from db.engine import get_engine, session_scope

    with session_scope(get_engine(url)) as session:
        return repo.get_champion(session=session, model_name="anomdet")


def _copy_as_candidate(url: str, champion: Any) -> int:
    """A candidate with the champion's artifact: a backfill to measure, nothing trained."""
    from db import repository as repo
    from db.engine import get_engine, session_scope

    with session_scope(get_engine(url)) as session:
        return repo.register_candidate(
            session=session, model_name="anomdet", base_model=champion.base_model,
            artifact_uri=champion.artifact_uri, weights_sha256=champion.weights_sha256,
            data_fingerprint=champion.data_fingerprint,
            hyperparameters=champion.hyperparameters, metrics=champion.metrics,
            threshold=champion.threshold).id


def _backfill_rate(url: str, candidate: int, workers: int, chunks: int) -> tuple[float, int]:
    """Rows per second of the backfill flow on a local Dask cluster of `workers`."""
    import logging

    from flows.score import backfill, with_task_runner

    logging.getLogger("distributed").setLevel(logging.WARNING)  # a line per worker event
    start = time.perf_counter()
    done = with_task_runner(backfill, "dask", workers)(version_id=candidate, chunks=chunks)
    seconds = time.perf_counter() - start
    return done["scored"] / seconds, done["scored"]


def _flip_ms(url: str, candidate: int, champion: int, repeats: int = 5) -> float:
    """Median milliseconds of the flip's transaction; between flips the two versions are
    put back as they were, so that each flip does the same work."""
    from db import repository as repo
    from db.engine import get_engine, session_scope
    from db.models import ModelVersion

    engine, times = get_engine(url), []
    for _ in range(repeats):
        start = time.perf_counter()
        with session_scope(engine) as session:
            repo.flip_champion(session=session, candidate_id=candidate,
                               expected_champion_id=champion)
        times.append((time.perf_counter() - start) * 1000)
        with engine.begin() as conn:
            for version_id, status in ((candidate, "candidate"), (champion, "champion")):
                conn.execute(sa.update(ModelVersion).where(ModelVersion.id == version_id)
                             .values(status=status, retired_at=None))
    with session_scope(engine) as session:  # the backfilled candidate serves from here on
        repo.flip_champion(session=session, candidate_id=candidate,
                           expected_champion_id=champion)
    return statistics.median(times)


def _add_new_records(url: str, rows: int, share: float = 0.01) -> int:
    """`share` of `rows` new unlabelled records, half with ids below every other."""
    count = max(2, int(rows * share))
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO records SELECT CASE WHEN g % 2 = 0 THEN -g ELSE :top + g END, "
            "'new event ' || g || ' on host ' || (g % 13), NULL, now() "
            "FROM generate_series(1, :n) g"), {"top": rows, "n": count})
        conn.execute(sa.text("ANALYZE records"))
    engine.dispose()
    return count


def _reads(url: str, repeats: int = 7) -> dict[str, Any]:
    """Median milliseconds of the view's top 10 and of one record by id, and whether each
    plan reads the records and flags through indexes only."""
    engine = sa.create_engine(url)
    figures: dict[str, Any] = {}
    with engine.connect() as conn:
        key = conn.execute(sa.text("SELECT record_id FROM anomdet_flagged "
                                   "ORDER BY score LIMIT 1")).scalar_one()
        for name, query, params in (("top10", TOP10, {}), ("by_id", BY_ID, {"key": key})):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                conn.execute(sa.text(query), params).all()
                times.append((time.perf_counter() - start) * 1000)
            plan = "\n".join(conn.execute(sa.text("EXPLAIN " + query), params).scalars())
            figures[f"{name}_ms"] = statistics.median(times)
            figures[f"{name}_uses_indexes"] = "Seq Scan" not in plan
            figures[f"{name}_plan"] = plan
    engine.dispose()
    return figures


def _prefect_env(home: Path) -> dict[str, str]:
    return {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
            "PREFECT_LOGGING_LEVEL": "WARNING"}


def _one_size(config: ScaleConfig, rows: int, work: Path,
              note: Callable[[str], None]) -> dict[str, Any]:
    url = _scratch(config.postgres_url)
    try:
        note(f"{rows:,} records: filling the scratch database")
        _fill(url, rows, config.labelled, config.seed)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMDET_")}
        env |= _prefect_env(work / "prefect") | {
            "ANOMDET_DATABASE_URL": url, "ANOMDET_ARTIFACTS_DIR": str(work / "artifacts"),
            "ANOMDET_TRAINING__BASE_MODEL": "tiny-random",
            "ANOMDET_TRAINING__MIN_STEPS": "40", "ANOMDET_TRAINING__MAX_STEPS": "100",
            "ANOMDET_PROMOTION__FIRST_RUN": "always",
            "ANOMDET_SCORING__BACKFILL_CHUNKS": str(config.chunks)}
        note(f"{rows:,} records: anomdet retrain (its promotion backfills every record)")
        retrain_s, retrain_mb, _ = _run_command(["retrain"], env)
        os.environ.update(env)  # the backfill flow below reads its settings from here
        champion = _champion(url)
        figure: dict[str, Any] = {"rows": rows, "labelled": config.labelled,
                                  "retrain_s": retrain_s, "retrain_peak_rss_mb": retrain_mb,
                                  "backfill_rows_per_s": {}}
        candidate = None
        for workers in config.dask_workers:
            if candidate is not None:  # a fresh candidate for each cluster size
                _discard(url, candidate)
            candidate = _copy_as_candidate(url, champion)
            note(f"{rows:,} records: backfill on {workers} Dask worker(s)")
            rate, scored = _backfill_rate(url, candidate, workers, config.chunks)
            figure["backfill_rows_per_s"][str(workers)] = rate
            figure["backfilled_rows"] = scored
        note(f"{rows:,} records: the flip")
        figure["flip_ms"] = _flip_ms(url, candidate, champion.id)
        new = _add_new_records(url, rows)
        note(f"{rows:,} records: anomdet score after {new:,} new records")
        score_s, score_mb, _ = _run_command(["score"], env)
        figure |= {"incremental_rows": new, "incremental_s": score_s,
                   "incremental_rows_per_s": new / score_s, "score_peak_rss_mb": score_mb}
        figure |= _reads(url)
        note(f"{rows:,} records: extracting {rows:,} labelled records, all and capped")
        figure |= _extraction(url, rows, env, config.max_train_rows)
        return figure
    finally:
        _drop_scratch(config.postgres_url)


# Run in a fresh process: the extraction task's function, with the settings as a run
# has them; prints the rows read and the process's peak RSS in MB.
_EXTRACT = """
import re, time
from anomdet.settings import Settings
import tasks.database as td
start = time.perf_counter()
frame = td.extract_labelled.fn(Settings())
peak = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
print(len(frame), time.perf_counter() - start, int(peak) / 1024)
"""


def _extraction(url: str, rows: int, env: dict[str, str], cap: int) -> dict[str, Any]:
    """Peak RSS of reading a table of `rows` labelled records (5% anomalous): all of them,
    and a stratified sample for `max_train_rows=cap`, each in a fresh process."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE labelled (id BIGINT PRIMARY KEY, text TEXT, "
                             "label SMALLINT, created_at TIMESTAMPTZ)"))
        conn.execute(sa.text(
            "INSERT INTO labelled SELECT g, 'user ' || g || ' did something on host ' || "
            "(g % 251), CASE WHEN g % 20 = 0 THEN 1 ELSE 0 END, now() "
            "FROM generate_series(1, :n) g"), {"n": rows})
        conn.execute(sa.text("ANALYZE labelled"))
    engine.dispose()
    figure: dict[str, Any] = {}
    for name, extra in (("all", {}), ("capped", {"ANOMDET_TRAINING__MAX_TRAIN_ROWS": str(cap)})):
        done = subprocess.run([sys.executable, "-c", _EXTRACT], capture_output=True, text=True,
                              env=env | {"ANOMDET_RECORDS__TABLE": "labelled"} | extra,
                              check=True)
        read, seconds, peak = done.stdout.split()[-3:]
        figure |= {f"extract_{name}_rows": int(read), f"extract_{name}_s": float(seconds),
                   f"extract_{name}_peak_rss_mb": float(peak)}
    return figure


def _discard(url: str, candidate: int) -> None:
    from db import repository as repo
    from db.engine import get_engine, session_scope

    with session_scope(get_engine(url)) as session:
        repo.discard_candidate(session=session, candidate_id=candidate)


def run_scale_benchmark(config: ScaleConfig,
                        note: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Measure every size in `config.rows`; the figures, ratios and goals as a dict."""
    with tempfile.TemporaryDirectory(prefix="anomdet-bench-scale-") as folder:
        saved = dict(os.environ)
        try:
            sizes = [_one_size(config, rows, Path(folder) / str(rows), note)
                     for rows in config.rows]
        finally:
            os.environ.clear()
            os.environ.update(saved)
    result: dict[str, Any] = {"sizes": sizes, "goals": GOALS, "ratios": {}}
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        most = str(max(config.dask_workers))
        result["ratios"] = {
            "flip": large["flip_ms"] / small["flip_ms"],
            "backfill": (large["backfill_rows_per_s"][most]
                         / small["backfill_rows_per_s"][most]),
            "rows": large["rows"] / small["rows"]}
    return result


def results_table(result: dict[str, Any]) -> Table:
    table = Table(title="anomdet at table scale (PostgreSQL, tiny-random)")
    workers = list(result["sizes"][0]["backfill_rows_per_s"]) if result["sizes"] else []
    for column in ["records", "retrain s", "retrain MB",
                   *[f"backfill/s {w} Dask" for w in workers], "flip ms",
                   "1% new s", "score MB", "top-10 ms", "by-id ms", "read all MB",
                   "read capped MB"]:
        table.add_column(column, justify="right")
    for size in result["sizes"]:
        table.add_row(f"{size['rows']:,}", f"{size['retrain_s']:.0f}",
                      f"{size['retrain_peak_rss_mb']:.0f}",
                      *[f"{size['backfill_rows_per_s'][w]:,.0f}" for w in workers],
                      f"{size['flip_ms']:.1f}", f"{size['incremental_s']:.1f}",
                      f"{size['score_peak_rss_mb']:.0f}", f"{size['top10_ms']:.2f}",
                      f"{size['by_id_ms']:.2f}", f"{size['extract_all_peak_rss_mb']:.0f}",
                      f"{size['extract_capped_peak_rss_mb']:.0f}")
    return table


def _sizes(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v.replace("_", "")) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise ValueError(f"--rows takes record counts separated by commas, got {value!r}") from exc
    if not sizes or min(sizes) < 1000:
        raise ValueError(f"--rows needs sizes of at least 1000 records, got {value!r}")
    return sizes


def bench_scale_command(
    json_out: Path | None = typer.Option(None, "--json", help="also write the figures here"),
    rows: str = typer.Option("100000,1000000", help="record counts to measure, by commas"),
    labelled: int = typer.Option(3000, min=200, help="labelled records among them"),
    postgres_url: str = typer.Option(
        DEFAULT_POSTGRES_URL, help="a PostgreSQL server where the benchmark may create (and "
                                   f"then drop) the database {SCRATCH_DATABASE}"),
    chunks: int = typer.Option(8, min=1, help="id ranges of each backfill"),
    dask_workers: str = typer.Option("1,2", help="Dask cluster sizes of the backfill"),
    seed: int = typer.Option(7, help="seed of the labelled demo records"),
    max_train_rows: int = typer.Option(5000, min=10, help="the cap of the capped extraction"),
) -> None:
    """Measure a promotion's backfill and flip, incremental scoring and the view's reads
    as the records table grows."""
    console = report_console()
    try:
        config = ScaleConfig(postgres_url=postgres_url, rows=_sizes(rows), labelled=labelled,
                             chunks=chunks, seed=seed, max_train_rows=max_train_rows,
                             dask_workers=tuple(int(w) for w in dask_workers.split(",")))
        if any(size <= labelled for size in config.rows):
            raise ValueError(f"every --rows size must exceed --labelled ({labelled})")
        result = run_scale_benchmark(config, note=lambda m: console.log(m, highlight=False))
    except ValueError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    console.print(results_table(result))
    ratios, goals = result["ratios"], result["goals"]
    if ratios:
        console.print(f"flip at {ratios['rows']:.0f}x the records: {ratios['flip']:.2f}x the "
                      f"time (goal <= {goals['flip_ratio_max']}); backfill rows/s: "
                      f"{ratios['backfill']:.2f}x (goal >= {goals['backfill_ratio_min']})",
                      highlight=False)
    largest = result["sizes"][-1]
    console.print(f"view reads at {largest['rows']:,} records: top 10 {largest['top10_ms']:.2f} "
                  f"ms, by id {largest['by_id_ms']:.2f} ms (goal <= {goals['read_ms_max']:g} "
                  f"ms); indexes only: {largest['top10_uses_indexes']}, "
                  f"{largest['by_id_uses_indexes']}", highlight=False)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
        console.print(f"figures written to {json_out}")
