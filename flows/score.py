"""The scoring flow: score new unlabelled records with the champion, incrementally.

The work is found by what the champion has not scored: unlabelled records without a
kept score for it, or whose text no longer hashes to the one scored, whatever their
id type or order. It is cut into id ranges that are mapped over tasks, so the same
flow runs on the default thread pool or on Dask workers (`anomdet score --task-runner
dask`). Scores and flags are written per chunk, so a run stopped at any point is
simply run again and picks up what is left.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated, Any

from prefect import Flow, flow, get_run_logger, unmapped
from prefect.runtime import task_run
from prefect.states import Completed, State
from pydantic import Field

from anomdet.outcome import ScoreCounts
from anomdet.settings import Settings
from flows.logs import flow_timeout, run_namer, show_domain_logs
from flows.parameters import ModelName, settings_for
from tasks.database import prepare_database
from tasks.events import emit_flags_written, on_run_failed
from tasks.report import new_flags, publish_scoring
from tasks.scoring import ScoringPlan, finish_scoring, plan_backfill, plan_scoring, score_range


def _range_name() -> str:
    """`score ids 1-5000`: each mapped task says which records it scores."""
    low, high = task_run.parameters["id_range"]
    return f"score ids {'start' if low is None else low}-{'end' if high is None else high}"


# A failed or crashed run emits anomdet.run.failed, which automations can notify on. A
# run past ANOMDET_SCORE_TIMEOUT_MINUTES ends TimedOut (Failed): the next run goes on
# from the last chunk it wrote.
@flow(name="score", log_prints=False, on_failure=[on_run_failed],
      on_crashed=[on_run_failed], flow_run_name=run_namer("score"),
      timeout_seconds=flow_timeout("score"))
def score(model_name: ModelName = None, chunks: Annotated[int, Field(ge=1)] = 4) -> State:
    """Score the unlabelled records the champion has not scored yet and write their flags.

    The run ends Completed with a message that says what it did; calling the flow returns
    the summary dict. No champion yet is an expected state, not a failure.

    Args:
        model_name: Model whose champion scores; empty: ANOMDET_MODEL_NAME ("anomdet").
            A promotion's trigger passes the promoted model.
        chunks: Id ranges the records are cut into, one scoring task each.
    """
    show_domain_logs()
    started = datetime.now(UTC)
    settings = settings_for(model_name)
    prepare_database(settings)
    plan = plan_scoring(settings, chunks)
    if plan is None:
        message = (f"nothing scored: {settings.model_name!r} has no champion yet; "
                   "`anomdet retrain` makes one")
        get_run_logger().info(message)
        return Completed(message=message, data={"model_version_id": None, "records": 0,
                                                "scored": 0, "flagged": 0, "skipped": 0,
                                                "message": message})
    outcome = finish_scoring(settings, plan, _score_ranges(settings, plan))
    counts = outcome.counts
    emit_flags_written(settings.model_name, version=plan.version, version_id=plan.version_id,
                       threshold=dict(plan.recorded).get("threshold"),
                       flagged=counts.flagged, scored=counts.scored)
    logger = get_run_logger()
    logger.info("scored %d records in %d chunks, %d flagged, %d skipped",
                counts.scored, len(plan.ranges), counts.flagged, counts.skipped)
    if counts.unkeyed:
        logger.warning("%d unlabelled records were not scored: their id is NULL or held by "
                       "another record too (e.g. %s); give each record an id of its own",
                       counts.unkeyed, ", ".join(counts.unkeyed_example_ids[:5]))
    summary = outcome.to_dict()
    version, flags = new_flags(settings, plan.version_id, started)
    publish_scoring(settings.model_name, version, dict(plan.recorded).get("threshold"), summary,
                    flags)
    message = (f"v{version}: {counts.scored} records scored, {counts.flagged} flagged"
               if counts.scored or counts.skipped
               else f"nothing new to score: v{version} has scored every unlabelled record")
    logger.info(message)
    return Completed(message=message, data={**summary, "message": message})


def _score_ranges(settings: Settings, plan: ScoringPlan) -> list[ScoreCounts]:
    """Score the plan's id ranges, one mapped task each; their summaries."""
    # Settings is a pydantic model, which is iterable: mark it (and the plan) unmapped.
    futures = score_range.with_options(task_run_name=_range_name).map(
        unmapped(settings), unmapped(plan), plan.ranges)
    return [f.result() for f in futures]


# No settings among the parameters: Prefect shows and stores them, and the database URL
# may hold a password. The subflow reads the settings as its parent does.
@flow(name="backfill", log_prints=False, flow_run_name=run_namer("backfill"))
def backfill(version_id: int, chunks: int = 4, run_id: int | None = None,
             model_name: ModelName = None) -> dict[str, Any]:
    """Score the unlabelled records for a candidate version before it becomes champion.

    The records are cut into id ranges mapped over tasks, on the thread pool or on Dask
    workers (`ANOMDET_SCORING__BACKFILL_TASK_RUNNER=dask`). Each chunk's scores and flags
    commit on their own, and a backfill plans only what its version has not scored: one
    stopped at any point is resumed by running it again. Nobody sees the candidate's
    flags until the retraining flow flips it to champion. `model_name` names the run.
    """
    show_domain_logs()
    settings = settings_for(model_name)
    plan = plan_backfill(settings, version_id, chunks, run_id)
    done = ScoreCounts.total(_score_ranges(settings, plan))
    get_run_logger().info("v%s: %d records scored in %d ranges, %d flagged", plan.version,
                          done.scored, len(plan.ranges), done.flagged)
    return {"version_id": version_id, "ranges": len(plan.ranges), "records": plan.records,
            "scored": done.scored, "flagged": done.flagged, "skipped": done.skipped}


def with_task_runner(flow_fn: Flow, name: str, workers: int = 2) -> Flow:
    """The flow on the named task runner: 'default' threads or a local Dask cluster."""
    if name == "default":
        return flow_fn
    if name == "dask":
        from prefect_dask import DaskTaskRunner

        # Processes, one task at a time each, and the cores shared out between them: a
        # worker whose model used every core would only wait on the others.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        share = {"OMP_NUM_THREADS": str(max(1, cores // workers))}
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": workers, "processes": True,
                                                "threads_per_worker": 1, "env": share,
                                                "dashboard_address": None})
        return flow_fn.with_options(task_runner=runner)
    raise ValueError(f"unknown task runner {name!r}: use 'default' or 'dask'")
