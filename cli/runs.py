"""The commands that run flows or write records: retrain, demo, import-csv, score, serve."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from cli.common import (
    cell,
    debug_on,
    explain_failure,
    fail,
    markup_free,
    out,
    read_settings,
)
from cli.runtime import flow_terminal, model_environment, own_prefect_server, prefect_environment
from flows.schedules import CHECK_CRON, RETRAIN_CRON, SCORE_CRON, TIMEZONE

if TYPE_CHECKING:
    import sqlalchemy as sa

    from anomdet.outcome import RetrainOutcome
    from db.records import RecordsMapping


def _print_outcome(outcome: RetrainOutcome) -> None:
    from anomdet.report import metrics_table

    table = Table(title=f"run {outcome.run_id}: challenger, champion and TF-IDF baseline "
                        "on the same test split")
    for col in ("metric", "challenger", "champion", "difference", "baseline", "vs baseline"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for row in metrics_table(outcome.challenger, outcome.champion, outcome.baseline):
        table.add_row(*map(cell, row.values()))
    out.print(table)
    for name, passed, detail in outcome.checks:
        out.print(f"  {'[green]pass[/]' if passed else '[red]FAIL[/]'} {markup_free(name)}: "
                  f"{markup_free(detail)}", highlight=False)
    out.print(f"decision: [bold]{outcome.decision}[/] - {markup_free(outcome.reason)}",
              highlight=False)
    if outcome.promoted:
        from anomdet.report import flagged_sql

        out.print(f"version {outcome.promoted_version} is now champion; "
                  f"{outcome.flags_written} records flagged.")
        out.print(f"query the flags with: {flagged_sql(read_settings().model_name)}", markup=False,
                  highlight=False)
    elif outcome.champion_version is not None:
        out.print(f"version {outcome.champion_version} stays champion; its flags are "
                  "unchanged.")
    else:
        out.print("there is still no champion, so nothing is flagged.")


def _run_retrain(base_model: str | None, epochs: int | None, seed: int | None,
                 max_train_rows: int | None, learning_rate: float | None = None) -> None:
    from prefect import tags

    from anomdet.errors import DataValidationError
    from flows.retrain import retrain

    _check_before_training(read_settings(), base_model)
    own_prefect_server()
    try:
        with flow_terminal(), tags("anomdet", "retrain"):  # as the deployments' runs
            outcome = retrain(base_model=base_model, epochs=epochs, seed=seed,
                              max_train_rows=max_train_rows, learning_rate=learning_rate)
    except KeyboardInterrupt:
        from flows.retrain import CANCELLED

        # 128 + SIGINT, as a shell reports a command that Ctrl-C stopped.
        fail(f"interrupted: the run is recorded in anomdet_runs as failed, {CANCELLED}; "
             "`anomdet status` shows it", code=130)
    except DataValidationError as exc:
        fail(str(exc))
    except Exception as exc:  # the flow run is marked Failed; say why and exit non-zero
        if debug_on():
            raise
        fail(explain_failure(exc))
    _print_outcome(outcome)


def _check_before_training(settings: Any, base_model: str | None = None) -> None:
    """What can fail after an hour of training is checked first: the database, the
    records mapping and its columns, that the artifacts folder takes a file, and that it
    has room for what the run writes there."""
    from anomdet.artifact import check_writable
    from db.engine import migrate
    from db.records import reflect_records_table

    if settings.promotion.require_approval:
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            fail("ANOMDET_PROMOTION__REQUIRE_APPROVAL=true: a promotion waits for an answer "
                 "in the Prefect UI, but PREFECT_API_URL is not set, so this run would pause "
                 "on a temporary API that nobody can reach; start `prefect server start` and "
                 "export PREFECT_API_URL=http://127.0.0.1:4200/api, or unset the variable")
    engine = settings.engine()
    migrate(engine)
    reflect_records_table(engine, settings.records.mapping())
    check_writable(settings.artifact_root())
    _check_room(settings, base_model or settings.training.base_model)


def _check_room(settings: Any, base_model: str) -> None:
    """Refuse a run whose files would not fit in the artifacts folder, where their size is
    known before training: the base model is the bundled one or a local folder."""
    from anomdet.artifact import check_free_space, model_bytes
    from anomdet.encoder import BUNDLED, bundled_model_dir

    source = bundled_model_dir() if base_model == BUNDLED else Path(base_model).expanduser()
    size = model_bytes(source)
    if size is None:  # 'tiny-random' or a hub id: known once loaded, checked when saved
        return
    # The challenger kept for a retry and the new version's artifact: a copy each.
    check_free_space(settings.artifact_root(), 2 * size,
                     f"a run fine-tuning {base_model} (a kept challenger and a model artifact)")


def _records_table(engine: sa.Engine, mapping: RecordsMapping) -> sa.Table:
    """The records table, created in the default shape if missing; a mapped column that the
    existing table lacks ends the command with the reason instead of a traceback."""
    from db.records import ensure_records_table

    try:
        return ensure_records_table(engine, mapping)
    except ValueError as exc:
        fail(str(exc))


BASE_MODEL_HELP = "'bundled' (all-MiniLM-L6-v2, offline), 'tiny-random', a directory or a hub id"


def retrain(
    base_model: str = typer.Option(None, help=BASE_MODEL_HELP),
    epochs: int = typer.Option(None, min=1, help="training epochs (default from settings)"),
    seed: int = typer.Option(
        None, help="seed for initialisation and batching (the split keeps training.split_seed)"),
    max_train_rows: int = typer.Option(None, min=10, help="cap on training rows"),
    learning_rate: float = typer.Option(None, min=0, help="peak learning rate"),
    task_runner: str = typer.Option(
        None, help="where a promotion's backfill runs: 'default' (threads) or 'dask' "
                   "(default: ANOMDET_SCORING__BACKFILL_TASK_RUNNER)"),
    dask_workers: int = typer.Option(
        None, min=1, help="local Dask workers of the backfill (with --task-runner dask)"),
) -> None:
    """Run the retraining flow once: exit 0 when it completes, promoted or not."""
    # The flow reads its settings itself: the options reach it as the settings they set.
    for name, value in (("BACKFILL_TASK_RUNNER", task_runner), ("DASK_WORKERS", dask_workers)):
        if value is not None:
            os.environ[f"ANOMDET_SCORING__{name}"] = str(value)
    read_settings()  # every setting is checked before a model library loads
    model_environment()
    _run_retrain(base_model, epochs, seed, max_train_rows, learning_rate)


def demo(
    rows: int = typer.Option(3000, min=100, help="demo records to seed into an empty table"),
    anomaly_rate: float = typer.Option(0.1, min=0.01, max=0.45, help="share of anomalies"),
    labelled: float = typer.Option(0.8, min=0.1, max=1.0, help="share of records labelled"),
    base_model: str = typer.Option(None, help=BASE_MODEL_HELP),
    epochs: int = typer.Option(None, min=1, help="training epochs (default from settings)"),
    learning_rate: float = typer.Option(None, min=0,
                                        help="peak learning rate (default from settings)"),
) -> None:
    """Seed demo records if the records table is empty, then run the retraining flow.

    Each demo run trains with another seed, as a nightly run on fresh data would
    produce another model, so the second run has a real challenger to judge.
    """
    settings = read_settings()  # every setting is checked before a model library loads
    model_environment()
    from anomdet.demo import generate_demo_records
    from db.service import count_runs, seed_if_empty

    engine = settings.engine()
    mapping = settings.records.mapping()
    frame = seed_if_empty(engine, _records_table(engine, mapping), mapping,
                          lambda: generate_demo_records(rows, anomaly_rate=anomaly_rate,
                                                        labelled_fraction=labelled))
    if frame is not None:
        out.print(f"seeded {len(frame)} demo records into {mapping.table!r} "
                  f"({int(frame['label'].notna().sum())} labelled)")
    out.print(f"database: {settings.safe_database_url()}")
    previous_runs = count_runs(engine, settings.model_name)
    _run_retrain(base_model, epochs, settings.training.seed + previous_runs, None,
                 learning_rate)


def import_csv(file: Path = typer.Argument(..., help="CSV with columns id,text and optional label")
               ) -> None:
    """Insert or update records from a CSV file, all or nothing."""
    prefect_environment()
    settings = read_settings()
    from anomdet.csv_import import read_records_csv
    from db.engine import migrate
    from db.records import target_id_column
    from db.service import write_records

    engine = settings.engine()
    mapping = settings.records.mapping()
    try:
        # Ids are checked against the type of the column they go into, before any write.
        frame = read_records_csv(file, target_id_column(engine, mapping))
    except ValueError as exc:
        fail(str(exc))
    # After the file is accepted, so that a refused one leaves the database as it was.
    migrate(engine)
    written = write_records(engine, _records_table(engine, mapping), mapping, frame)
    out.print(f"imported {written} records into {mapping.table!r}")


def score(
    task_runner: str = typer.Option("default", help="'default' (threads) or 'dask'"),
    chunks: int = typer.Option(4, min=1, help="id ranges mapped over scoring tasks"),
    dask_workers: int = typer.Option(2, min=1, help="local Dask workers (with --task-runner dask)"),
) -> None:
    """Score unlabelled records that the champion has not scored yet."""
    read_settings()  # a bad setting is reported before a model library loads or a flow starts
    model_environment()
    from prefect import tags

    from flows.score import score as score_flow
    from flows.score import with_task_runner

    own_prefect_server()
    try:
        with flow_terminal(), tags("anomdet", "score"):
            summary = with_task_runner(score_flow, task_runner, dask_workers)(chunks=chunks)
    except Exception as exc:
        if debug_on():
            raise
        fail(explain_failure(exc))
    # Data, not markup: ids and texts may hold brackets.
    out.print(json.dumps(summary, indent=2, default=str), markup=False, highlight=False)


def serve(
    retrain_cron: str = typer.Option(RETRAIN_CRON, help="when to retrain (cron, in --timezone)"),
    score_cron: str = typer.Option(SCORE_CRON, help="when to score new records (cron)"),
    timezone: str = typer.Option(TIMEZONE, help="time zone of the schedules"),
    check_cron: str = typer.Option(
        CHECK_CRON, help="when to check for new labels and drift, which start a retrain (cron)"),
) -> None:
    """Serve the retraining, scoring and label-checking deployments from this process (no
    worker needed)."""
    read_settings()  # a bad setting is reported now, not at the first scheduled run
    model_environment()
    from flows.serve import serve_all

    own_prefect_server()
    try:
        serve_all(retrain_cron=retrain_cron, score_cron=score_cron, timezone=timezone,
                  check_cron=check_cron)
    except ValueError as exc:
        fail(str(exc))
