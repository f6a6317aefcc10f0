"""anomdet's own log lines in each run's logs, in the UI and on the terminal, the names
runs carry there, and the bounds on how long each flow may run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from anomdet.errors import DataValidationError, DriftError

#: The loggers of anomdet's domain and flows. PREFECT_LOGGING_EXTRA_LOGGERS sends their
#: records to the run's logs (prefect.yaml and the `anomdet` command set it), but Prefect
#: leaves their level at the root logger's WARNING, which drops every INFO line.
DOMAIN_LOGGERS = ("anomdet", "db", "tasks", "flows")

#: The line Prefect's engine writes, with a traceback, when a deployment's run ends Failed.
ENGINE_FAILURE = "Engine execution exited with unexpected exception"

#: Failures that are an outcome, not a fault: the data gates stopped the run.
EXPECTED_FAILURES = (DataValidationError, DriftError)


class ExpectedFailureFilter(logging.Filter):
    """Drops the engine's traceback of a run that a data gate stopped. The run has ended
    Failed with the gate's words as its message, and the validation artifact says which
    records failed; 70 lines of Prefect's call stack would only bury that."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.getMessage() != ENGINE_FAILURE:
            return True
        return not isinstance(record.exc_info[1], EXPECTED_FAILURES)


def show_domain_logs() -> None:
    """Let the INFO lines of anomdet's loggers through, unless a level was set for them
    already (a logging configuration of the user's own, say), and keep the tracebacks of
    expected failures out of the run's logs."""
    for name in DOMAIN_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    # The engine logs through the flow run logger ("prefect.flow_runs") of its process.
    engine = logging.getLogger("prefect.flow_runs")
    if not any(isinstance(f, ExpectedFailureFilter) for f in engine.filters):
        engine.addFilter(ExpectedFailureFilter())


def run_namer(kind: str) -> Callable[[], str]:
    """A flow_run_name that names a run once: `<kind>-<model>-<date>-<time>` for a run
    started by calling the flow (the command line, a subflow), and the name it was given
    at creation for a deployment's run (`retrain-anomdet-...` when the check flow starts
    it, Prefect's own two words when a schedule, an automation or the UI does). Prefect
    calls this each time the run starts, retries included: a run never changes its name."""
    def name() -> str:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        if context is None or context.flow_run is None:
            return new_run_name(kind)
        given = context.flow_run.name
        # A deployment's run keeps the name it was created with; a subflow run that its
        # parent's retry takes up again keeps the one it was given the first time.
        if context.flow_run.deployment_id is not None or given.startswith(f"{kind}-"):
            return given
        return new_run_name(kind, (context.parameters or {}).get("model_name"))
    return name


def new_run_name(kind: str, model_name: str | None = None) -> str:
    """`retrain-anomdet-2026-12-04-1650`: the run list says what each run is."""
    if model_name is None:
        from anomdet.settings import Settings

        try:
            model_name = Settings().model_name
        except Exception:  # noqa: BLE001 - invalid settings fail the run itself, with the reason
            model_name = "anomdet"
    return f"{kind}-{model_name}-{datetime.now(UTC):%Y-%m-%d-%H%M}"


def flow_timeout(setting: str) -> float | None:
    """The named ANOMDET_*_TIMEOUT_MINUTES setting in seconds, read when a flow is defined
    (Prefect takes its timeout in the decorator); None when the settings are invalid,
    which the run then reports by variable name."""
    from pydantic import ValidationError

    from anomdet.settings import Settings

    try:
        settings = Settings()
    except (ValidationError, ValueError):
        return None
    minutes = (settings.run_timeout_minutes() if setting == "retrain"
               else getattr(settings, f"{setting}_timeout_minutes"))
    return minutes * 60
