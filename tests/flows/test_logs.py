"""Run names given once, the domain loggers' levels, the engine's traceback of a run that
its data stopped, and the flows' timeouts."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow
from prefect.states import Failed, State

from anomdet.errors import DataValidationError
from flows.logs import (
    DOMAIN_LOGGERS,
    ENGINE_FAILURE,
    ExpectedFailureFilter,
    flow_timeout,
    run_namer,
    show_domain_logs,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")

ATTEMPTS: list[str] = []


@flow(name="named", flow_run_name=run_namer("named"))
def named(model_name: str | None = None, fail: bool = False) -> State | None:
    """A flow named as anomdet's are; it fails on its first run when told to."""
    ATTEMPTS.append(model_name or "")
    if fail and len(ATTEMPTS) == 1:
        return Failed(message="first attempt")
    return None


def _record(exc: BaseException | None, message: str = ENGINE_FAILURE) -> logging.LogRecord:
    info = (type(exc), exc, None) if exc else None
    return logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, message, None,
                             info)


def test_a_called_flow_is_named_after_its_kind_model_and_time() -> None:
    ATTEMPTS.clear()
    state = named(model_name="fraud", return_state=True)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert re.fullmatch(r"named-fraud-\d{4}-\d\d-\d\d-\d{4}", run.name), run.name


def test_a_deployment_run_keeps_its_name_from_creation_through_a_retry() -> None:
    from prefect.states import AwaitingRetry

    ATTEMPTS.clear()
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(named)
        deployment_id = client.create_deployment(flow_id=flow_id, name="test")
        created = client.create_flow_run_from_deployment(
            deployment_id, parameters={"fail": True}, name="honored-dogfish")
        first = run_flow(named, flow_run=client.read_flow_run(created.id),
                         return_type="state")
        assert first.is_failed()
        # As the UI's Retry does: the same run, scheduled again.
        client.set_flow_run_state(created.id, AwaitingRetry(), force=True)
        second = run_flow(named, flow_run=client.read_flow_run(created.id),
                          return_type="state")
        ended = client.read_flow_run(created.id)
    assert second.is_completed() and ended.run_count == 2 and len(ATTEMPTS) == 2
    assert ended.name == "honored-dogfish"


def test_the_engine_traceback_of_a_run_stopped_by_its_data_is_dropped() -> None:
    report = type("Report", (), {"describe_failures": lambda self: "- too few anomalies"})()
    keep = ExpectedFailureFilter()
    assert not keep.filter(_record(DataValidationError(report)))
    assert keep.filter(_record(RuntimeError("a bug")))  # a fault keeps its traceback
    assert keep.filter(_record(None, "Finished in state Failed('data validation failed')"))


def test_show_domain_logs_sets_info_and_filters_the_engine_logger_once() -> None:
    engine = logging.getLogger("prefect.flow_runs")
    levels = {name: logging.getLogger(name).level for name in DOMAIN_LOGGERS}
    before = list(engine.filters)
    try:
        for name in DOMAIN_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        show_domain_logs()
        show_domain_logs()
        assert "flows" in DOMAIN_LOGGERS
        assert all(logging.getLogger(n).level == logging.INFO for n in DOMAIN_LOGGERS)
        assert sum(isinstance(f, ExpectedFailureFilter) for f in engine.filters) == 1
    finally:
        engine.filters[:] = before
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_score_and_check_are_bounded_by_their_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    monkeypatch.setenv("ANOMDET_SCORE_TIMEOUT_MINUTES", "3")
    monkeypatch.setenv("ANOMDET_CHECK_TIMEOUT_MINUTES", "0.5")
    assert flow_timeout("score") == 180 and flow_timeout("check") == 30
    saved = {name: sys.modules[name] for name in ("flows.score", "flows.check")
             if name in sys.modules}
    try:  # the decorator reads them as the module is imported, as a worker's run does
        for name in ("flows.score", "flows.check"):
            sys.modules.pop(name, None)
        score: Any = importlib.import_module("flows.score").score
        check: Any = importlib.import_module("flows.check").check
        assert (score.timeout_seconds, check.timeout_seconds) == (180, 30)
    finally:
        sys.modules.update(saved)
    monkeypatch.setenv("ANOMDET_SCORE_TIMEOUT_MINUTES", "-1")
    assert flow_timeout("score") is None  # the run itself reports the bad setting
