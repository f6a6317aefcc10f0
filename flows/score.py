"""The scoring flow: score new unlabelled records with the champion, incrementally.

The work is found by what the champion has not scored: unlabelled records without a
kept score for it, or whose text no longer hashes to the one scored, whatever their
id type or order. It is cut into id ranges that are mapped over tasks, so the same
flow runs on the default thread pool or on Dask workers (`anomdet score --task-runner
dask`). Scores and flags are written per chunk, so a run stopped at any point is
simply run again and picks up what is left.
"""

from __future__ import annotations

from typing import Any

from prefect import Flow, flow, get_run_logger, unmapped

from anomdet.settings import Settings
from tasks.database import prepare_database
from tasks.scoring import finish_scoring, plan_scoring, score_range


@flow(name="score", log_prints=False)
def score(chunks: int = 4) -> dict[str, Any]:
    """Score the unlabelled records the champion has not scored yet and write their flags."""
    settings = Settings()
    prepare_database(settings)
    plan = plan_scoring(settings, chunks)
    if plan is None:
        raise ValueError("there is no champion yet: run `anomdet retrain` first")
    # Settings is a pydantic model, which is iterable: mark it (and the plan) unmapped.
    futures = score_range.map(unmapped(settings), unmapped(plan), plan.ranges)
    summaries = [f.result() for f in futures]
    summary = finish_scoring(settings, plan, summaries)
    logger = get_run_logger()
    logger.info("scored %d records in %d chunks, %d flagged, %d skipped",
                summary["scored"], len(plan.ranges), summary["flagged"], summary["skipped"])
    if summary["unkeyed"]:
        logger.warning("%d unlabelled records were not scored: their id is NULL or held by "
                       "another record too (e.g. %s); give each record an id of its own",
                       summary["unkeyed"], ", ".join(summary["unkeyed_example_ids"][:5]))
    return summary


def with_task_runner(flow_fn: Flow, name: str, workers: int = 2) -> Flow:
    """The flow on the named task runner: 'default' threads or a local Dask cluster."""
    if name == "default":
        return flow_fn
    if name == "dask":
        from prefect_dask import DaskTaskRunner

        # Processes, one thread each: the model uses every core of its process already.
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": workers, "processes": True,
                                                "threads_per_worker": 1,
                                                "dashboard_address": None})
        return flow_fn.with_options(task_runner=runner)
    raise ValueError(f"unknown task runner {name!r}: use 'default' or 'dask'")
