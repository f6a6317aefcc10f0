"""anomdet's own log lines in each run's logs, in the UI and on the terminal, and the
names runs carry there."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

#: The loggers of anomdet's domain. PREFECT_LOGGING_EXTRA_LOGGERS sends their records to
#: the run's logs (prefect.yaml and the `anomdet` command set it), but Prefect leaves
#: their level at the root logger's WARNING, which drops every INFO line.
DOMAIN_LOGGERS = ("anomdet", "db", "tasks")


def show_domain_logs() -> None:
    """Let the INFO lines of anomdet's loggers through, unless a level was set for them
    already (a logging configuration of the user's own, say)."""
    for name in DOMAIN_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


def run_namer(kind: str) -> Callable[[], str]:
    """A flow_run_name for `<kind>-<model>-<date>-<time>`: the run list says what each run is."""
    def name() -> str:
        from anomdet.settings import Settings

        try:
            model = Settings().model_name
        except Exception:  # noqa: BLE001 - invalid settings fail the run itself, with the reason
            model = "anomdet"
        return f"{kind}-{model}-{datetime.now(UTC):%Y-%m-%d-%H%M}"
    return name
