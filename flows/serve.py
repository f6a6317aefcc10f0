"""Serve both flows on their schedules from one long-running process, without a work pool.

This is the lighter alternative to the deployments in prefect.yaml: no work pool, no
worker, no `prefect deploy`; the process that calls `serve_all` polls the server and
runs each scheduled or manually triggered run as a subprocess of itself. It still
needs a Prefect server (PREFECT_API_URL) to hold the schedules and the run history.
"""

from __future__ import annotations

import logging
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron, Schedule
from prefect.settings import get_current_settings

from flows.check import check
from flows.retrain import retrain
from flows.schedules import CHECK_CRON, RETRAIN_CRON, SCORE_CRON, TIMEZONE
from flows.score import score

logger = logging.getLogger(__name__)

#: Deployment names of the served flows. They differ from prefect.yaml's
#: `retrain-nightly` and `score-hourly` on purpose: serving under those names would
#: take over the work-pool deployments of the same flows on the same server.
RETRAIN_SERVED = "retrain-served"
SCORE_SERVED = "score-served"
CHECK_SERVED = "check-served"


def _schedule(expression: str, timezone: str, what: str) -> Schedule:
    """A cron schedule, or a ValueError naming the option that holds a bad value."""
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"timezone {timezone!r} is not an IANA time zone name; "
                         "use one such as 'UTC' or 'Europe/Berlin'") from exc
    try:
        return Cron(expression, timezone=timezone)
    except ValueError as exc:
        raise ValueError(f"{what} {expression!r} is not a cron expression; give five "
                         f"fields, minute hour day month weekday, e.g. {RETRAIN_CRON!r}"
                         ) from exc


def served_deployments(retrain_cron: str = RETRAIN_CRON, score_cron: str = SCORE_CRON,
                       timezone: str = TIMEZONE, check_cron: str = CHECK_CRON
                       ) -> list[RunnerDeployment]:
    """The retraining, scoring and label-checking deployments that `serve_all` serves,
    not yet registered."""
    retraining = retrain.to_deployment(
        name=RETRAIN_SERVED,
        schedules=[_schedule(retrain_cron, timezone, "retrain cron")],
        # One retraining at a time: a run triggered during another waits for it.
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        description="Retrain the detector; promote only a challenger that beats the champion.",
        tags=["anomdet", "retrain", "served"],
    )
    scoring = score.to_deployment(
        name=SCORE_SERVED,
        schedules=[_schedule(score_cron, timezone, "score cron")],
        # Scoring is incremental: a run that would overlap the previous one is dropped.
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        description="Score new unlabelled records with the champion and write their flags.",
        tags=["anomdet", "score", "served"],
    )
    checking = check.to_deployment(
        name=CHECK_SERVED,
        schedules=[_schedule(check_cron, timezone, "check cron")],
        # It starts the served retrain deployment, whose limit keeps one retrain at a time.
        parameters={"retrain_deployment": f"{retrain.name}/{RETRAIN_SERVED}"},
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        description="Start a retrain when enough new labels arrived or the unlabelled "
                    "records drifted.",
        tags=["anomdet", "check", "served"],
    )
    return [retraining, scoring, checking]


def serve_all(retrain_cron: str = RETRAIN_CRON, score_cron: str = SCORE_CRON,
              timezone: str = TIMEZONE, limit: int | None = 3,
              check_cron: str = CHECK_CRON) -> None:
    """Register the three deployments and run their flow runs here until interrupted.

    `retrain_cron`, `score_cron` and `check_cron` are cron expressions read in `timezone`
    (an IANA name); `limit` caps the flow runs this process executes at once.
    Blocks until SIGINT/SIGTERM; the schedules are paused on the way out. Raises
    ValueError for a bad cron expression or time zone, or when PREFECT_API_URL is unset.
    """
    deployments = served_deployments(retrain_cron, score_cron, timezone, check_cron)
    if not get_current_settings().api.url:
        # Without a server Prefect would serve against a temporary API that lives and
        # dies with this process: schedules and history would be invisible and lost.
        raise ValueError("PREFECT_API_URL is not set: start a server with `prefect server "
                         "start` and export PREFECT_API_URL=http://127.0.0.1:4200/api")
    logger.info("serving %s (%s), %s (%s) and %s (%s), %s", RETRAIN_SERVED, retrain_cron,
                SCORE_SERVED, score_cron, CHECK_SERVED, check_cron, timezone)
    serve(*deployments, limit=limit)
