"""Serve the flows on their schedules from one long-running process, without a work pool.

This is the lighter alternative to the deployments in prefect.yaml: no work pool, no
worker, no `prefect deploy`; the process that calls `serve_all` polls the server and
runs each scheduled or manually triggered run as a subprocess of itself. It still
needs a Prefect server (PREFECT_API_URL) to hold the schedules and the run history.

Each served deployment mirrors its flow's deployment in prefect.yaml (read through
flows.schedules): description, tags, parameters, schedule and concurrency limit are
written there once. Only the names differ, and the cron expressions and time zone when
`anomdet serve` is given others.
"""

from __future__ import annotations

import logging
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect import Flow, serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron, Schedule
from prefect.settings import get_current_settings

from flows.check import check
from flows.retrain import retrain
from flows.schedules import (
    CHECK_CRON,
    CHECK_ENTRYPOINT,
    RETRAIN_CRON,
    RETRAIN_ENTRYPOINT,
    SCORE_CRON,
    SCORE_ENTRYPOINT,
    TIMEZONE,
    Declared,
    declared,
)
from flows.score import score

logger = logging.getLogger(__name__)


def served_name(flow: Flow) -> str:
    """The name under which `serve_all` serves `flow`. It differs from prefect.yaml's
    names on purpose: serving under those would take over the work-pool deployments of
    the same flows on the same server."""
    return f"{flow.name}-served"


#: Deployment names of the served flows.
RETRAIN_SERVED = served_name(retrain)
SCORE_SERVED = served_name(score)
CHECK_SERVED = served_name(check)


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


def _limit(declaration: Declared) -> ConcurrencyLimitConfig | int | None:
    if declaration.concurrency_limit is None or declaration.collision_strategy is None:
        return declaration.concurrency_limit
    return ConcurrencyLimitConfig(
        limit=declaration.concurrency_limit,
        collision_strategy=ConcurrencyLimitStrategy(declaration.collision_strategy))


def served_deployments(retrain_cron: str = RETRAIN_CRON, score_cron: str = SCORE_CRON,
                       timezone: str = TIMEZONE, check_cron: str = CHECK_CRON
                       ) -> list[RunnerDeployment]:
    """The retraining, scoring and label-checking deployments that `serve_all` serves,
    not yet registered."""
    served = [(retrain, declared(RETRAIN_ENTRYPOINT), retrain_cron),
              (score, declared(SCORE_ENTRYPOINT), score_cron),
              (check, declared(CHECK_ENTRYPOINT), check_cron)]
    # A parameter naming a deployment of prefect.yaml (the check flow's retrain_deployment)
    # names its served twin instead: a served check starts the served retrain, whose
    # concurrency limit keeps one retrain at a time.
    twins = {f"{flow.name}/{declaration.name}": f"{flow.name}/{served_name(flow)}"
             for flow, declaration, _ in served}
    # prefect.yaml's triggers stay with `prefect deploy`: served copies would start a
    # second run for each event on a server that holds the work-pool deployments too.
    return [flow.to_deployment(
        name=served_name(flow),
        schedules=[_schedule(cron, timezone, f"{flow.name} cron")],
        concurrency_limit=_limit(declaration),
        parameters={name: twins.get(value, value) if isinstance(value, str) else value
                    for name, value in declaration.parameters.items()},
        enforce_parameter_schema=declaration.enforce_parameter_schema,
        description=declaration.description,
        tags=[*declaration.tags, "served"],
    ) for flow, declaration, cron in served]


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
