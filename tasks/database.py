"""Tasks that talk to the anomdet tables and the records table."""

from __future__ import annotations

import logging
import math
import os
import resource
import socket
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from anomdet.errors import is_transient
from anomdet.settings import Settings
from db import repository as repo
from db import service
from db.feedback import LabelNews


def only_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry a task only when its database connection failed: bad data, a missing
    table or a read-only database are the same on every try."""
    return isinstance(state.data, BaseException) and is_transient(state.data)


IO_RETRIES: dict[str, Any] = {"retries": 3, "retry_delay_seconds": [2, 5, 15],
                              "retry_condition_fn": only_transient}


@task(name="prepare database", cache_policy=NO_CACHE)
def prepare_database(settings: Settings) -> None:
    """Migrate the anomdet tables and check the records table against its mapping."""
    service.prepare(settings.engine(), settings.records.mapping(),
                    settings.review.queue_sample_every)


@task(name="start run", cache_policy=NO_CACHE, **IO_RETRIES)
def start_run(settings: Settings, flow_run_id: str | None, parameters: dict[str, Any]) -> int:
    """Record a new run in anomdet_runs and return its id; close runs whose process died."""
    with settings.session() as session:
        opened = repo.open_run(session=session, model_name=settings.model_name,
                               flow_run_id=flow_run_id, parameters=parameters,
                               host=socket.gethostname(), pid=os.getpid(), is_alive=_pid_alive)
    if opened.closed:
        get_run_logger().warning("marked abandoned runs %s as failed", opened.closed)
    return opened.run_id


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@task(name="record run progress", cache_policy=NO_CACHE, **IO_RETRIES)
def record_progress(settings: Settings, run_id: int, progress: repo.RunProgress) -> None:
    """Write what the run has learnt so far (validation, drift, metrics) to its row."""
    with settings.session() as session:
        repo.record_progress(session=session, run_id=run_id, progress=progress)


@task(name="end run", cache_policy=NO_CACHE, **IO_RETRIES)
def end_run(settings: Settings, run_id: int, ending: repo.RunEnding) -> None:
    """Close the run's row with its final state, its decision and the reason."""
    with settings.session() as session:
        repo.end_run(session=session, run_id=run_id, ending=ending)


@task(name="read top flagged records", cache_policy=NO_CACHE, **IO_RETRIES)
def read_top_flagged(settings: Settings) -> list[dict[str, Any]]:
    """The champion's highest-scoring flags with their text, from `anomdet_flagged`."""
    with settings.session() as session:
        return repo.flagged_rows(session=session, limit=settings.top_flagged)


@task(name="count new labels", cache_policy=NO_CACHE, **IO_RETRIES)
def count_new_labels(settings: Settings) -> LabelNews:
    """The labels in the records table that the champion never trained on."""
    return service.champion_label_news(settings.engine(), settings.model_name,
                                       settings.records.mapping())


@task(name="read production precision", cache_policy=NO_CACHE, **IO_RETRIES)
def read_version_quality(settings: Settings) -> list[dict[str, Any]]:
    """`anomdet_version_quality`'s rows of the model, newest version first."""
    return service.quality_newest_first(settings.engine(), settings.model_name,
                                        settings.records.mapping())


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger in a run; a plain logger when a task's function is called alone
    (tests, benchmarks)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("tasks")


def labelled_sample(settings: Settings) -> int | None:
    """How many labelled records to read when training rows are capped: enough that the
    train side of the split holds `max_train_rows`; None reads them all."""
    cap, t = settings.training.max_train_rows, settings.training
    if cap is None:
        return None
    # The tolerance keeps float error (52 / 0.65 = 80.000...01) from adding a row.
    return math.ceil(cap / (1 - t.val_fraction - t.test_fraction) - 1e-9)


@task(name="extract labelled records", cache_policy=NO_CACHE, **IO_RETRIES)
def extract_labelled(settings: Settings) -> pd.DataFrame:
    """Read the labelled records, in chunks, under the standard column names: all of
    them, or with `max_train_rows` a stratified sample drawn by the database."""
    frame = service.labelled_records(settings.engine(), settings.records.mapping(),
                                     chunk_size=settings.chunk_size,
                                     sample=labelled_sample(settings),
                                     seed=settings.training.split_seed)
    capped = settings.training.max_train_rows
    run_logger().info(
        "read %d labelled records%s; peak memory so far %.0f MB", len(frame),
        f" (a stratified sample for max_train_rows={capped})" if capped else "",
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return frame
