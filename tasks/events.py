"""Prefect events that say what anomdet did, for the Event Feed, automations and triggers.

Each event's resource is the model, `anomdet.model.<name>`, labelled with the version when
there is one; the version is also a related resource (`anomdet.model.<name>.v<n>`), and
Prefect adds the flow run, flow, deployment and tags of the run that emits it. The figures
go in the payload. Emitting never fails the caller: an event that cannot be sent is
logged and dropped, and Prefect's events worker sends in the background, so an
unreachable server costs a warning, not a run.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
from typing import Any

from prefect.events import Event, emit_event

logger = logging.getLogger(__name__)

PROMOTED = "anomdet.model.promoted"
REJECTED = "anomdet.model.rejected"
ROLLED_BACK = "anomdet.model.rolled_back"
VALIDATION_FAILED = "anomdet.validation.failed"
RUN_FAILED = "anomdet.run.failed"
FLAGS_WRITTEN = "anomdet.flags.written"
APPROVAL_REQUESTED = "anomdet.approval.requested"
LABELS_ARRIVED = "anomdet.labels.arrived"

# A state message or a reason may quote a database URL (pydantic echoes invalid input);
# its password must not reach the event store, which every API user can read.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^\s:/@]*:)[^\s@/]+(?=@)")
# Long texts (tracebacks, reasons with check lists) are cut: events have a size limit.
_MAX_TEXT = 2000


def model_resource(model_name: str, version: int | None = None) -> dict[str, str]:
    """The model as an event resource; `anomdet.model.*` matches every model."""
    resource = {"prefect.resource.id": f"anomdet.model.{model_name}",
                "prefect.resource.name": model_name, "anomdet.model": model_name}
    if version is not None:
        resource["anomdet.version"] = str(version)
    return resource


def version_resource(model_name: str, version: int, role: str = "model-version"
                     ) -> dict[str, str]:
    """One version of the model as a related resource."""
    return {"prefect.resource.id": f"anomdet.model.{model_name}.v{version}",
            "prefect.resource.role": role, "prefect.resource.name": f"{model_name} v{version}"}


def scrub(value: Any) -> Any:
    """The payload as plain JSON values: numbers rounded, URL passwords masked, long
    texts cut, so that an event is always serialisable, small and safe to show."""
    if isinstance(value, dict):
        return {str(k): scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [scrub(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return round(number, 6) if math.isfinite(number) else None
    text = _URL_PASSWORD.sub(r"\g<head>***", str(value))
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + " [...]"


def emit(event: str, model_name: str, *, version: int | None = None,
         payload: dict[str, Any] | None = None,
         related: list[dict[str, str]] | None = None) -> Event | None:
    """Emit one anomdet event about `model_name` (and `version`); None if not sent."""
    links = list(related or [])
    if version is not None:
        links.insert(0, version_resource(model_name, version))
    try:
        return emit_event(event, resource=model_resource(model_name, version),
                          related=[scrub(r) for r in links], payload=scrub(payload or {}))
    except Exception as exc:  # noqa: BLE001 - an event is never worth a failed run
        logger.warning("event %s was not emitted: %s", event, exc)
        return None


def emit_promoted(model_name: str, version: int, *, previous_version: int | None,
                  metrics: dict[str, Any], champion_metrics: dict[str, Any] | None,
                  threshold: float, flags_written: int, artifact_uri: str, run_id: int,
                  reason: str) -> Event | None:
    """A challenger became champion `version`."""
    related = ([version_resource(model_name, previous_version, "previous-champion")]
               if previous_version is not None else [])
    return emit(PROMOTED, model_name, version=version, related=related, payload={
        "run_id": run_id, "version": version, "previous_version": previous_version,
        "metrics": metrics, "champion_metrics": champion_metrics, "threshold": threshold,
        "flags_written": flags_written, "artifact_uri": artifact_uri, "reason": reason})


def emit_rejected(model_name: str, *, champion_version: int | None, metrics: dict[str, Any],
                  champion_metrics: dict[str, Any] | None, run_id: int,
                  reason: str) -> Event | None:
    """A challenger was not promoted; the champion, if any, stays."""
    return emit(REJECTED, model_name, version=champion_version, payload={
        "run_id": run_id, "champion_version": champion_version, "metrics": metrics,
        "champion_metrics": champion_metrics, "reason": reason})


def emit_approval_requested(model_name: str, *, run_id: int, champion_version: int | None,
                            metrics: dict[str, Any], timeout_minutes: float,
                            reason: str) -> Event | None:
    """A challenger passed the rule and waits for a person's answer in the UI."""
    return emit(APPROVAL_REQUESTED, model_name, version=champion_version, payload={
        "run_id": run_id, "champion_version": champion_version, "metrics": metrics,
        "timeout_minutes": timeout_minutes, "reason": reason})


def emit_labels_arrived(model_name: str, *, labels: dict[str, Any], started: str | None,
                        reasons: list[str], started_id: str | None = None) -> Event | None:
    """The check flow found enough new labels (or drift) to start a retrain: `started`
    names the run it started, `started_id` is its id (also a related resource)."""
    related = ([{"prefect.resource.id": f"prefect.flow-run.{started_id}",
                 "prefect.resource.role": "started-flow-run",
                 "prefect.resource.name": started or ""}] if started_id else [])
    return emit(LABELS_ARRIVED, model_name, related=related, payload={
        "labels": labels, "retrain_flow_run": started, "retrain_flow_run_id": started_id,
        "reasons": reasons})


def emit_validation_failed(model_name: str, *, run_id: int, reason: str,
                           summary: dict[str, Any] | None) -> Event | None:
    """The records (or their drift from the champion's data) stopped a retraining run."""
    return emit(VALIDATION_FAILED, model_name, payload={
        "run_id": run_id, "reason": reason, "summary": summary})


def emit_flags_written(model_name: str, *, flagged: int, scored: int,
                       version: int | None = None, version_id: int | None = None,
                       threshold: float | None = None, run_id: int | None = None
                       ) -> Event | None:
    """Records were scored and their flags written for a champion; nothing is emitted
    when no record was scored, so that an automation on this event acts on new flags."""
    if scored <= 0:
        return None
    return emit(FLAGS_WRITTEN, model_name, version=version, payload={
        "flagged": flagged, "scored": scored, "version": version,
        "model_version_id": version_id, "threshold": threshold, "run_id": run_id})


def emit_rolled_back(model_name: str, version: int, *, previous_version: int | None,
                     reason: str, run_id: int) -> Event | None:
    """An earlier version was made champion again."""
    related = ([version_resource(model_name, previous_version, "previous-champion")]
               if previous_version is not None else [])
    return emit(ROLLED_BACK, model_name, version=version, related=related, payload={
        "run_id": run_id, "version": version, "previous_version": previous_version,
        "reason": reason})


def on_run_failed(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow state hook (on_failure, on_crashed): emit `anomdet.run.failed`, unless the
    data stopped the run, which emitted `anomdet.validation.failed` already: one
    failure, one event, one notification."""
    from anomdet.errors import DataValidationError, DriftError

    try:
        stopped_by = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - a result that cannot be read is no data gate's
        stopped_by = None
    if isinstance(stopped_by, DataValidationError | DriftError):
        return
    emit(RUN_FAILED, _model_of(flow_run), related=[
        {"prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
         "prefect.resource.role": "flow-run", "prefect.resource.name": flow_run.name}],
         payload={"flow": flow.name, "flow_run_id": str(flow_run.id),
                  "flow_run": flow_run.name, "state": state.type.value,
                  "message": state.message or ""})


def _model_of(flow_run: Any) -> str:
    """The model the run was about: its `model_name` parameter, else the configured one,
    else "unknown" (the settings may be what failed the run)."""
    named = (getattr(flow_run, "parameters", None) or {}).get("model_name")
    if named:
        return str(named)
    try:
        from anomdet.settings import Settings

        return Settings().model_name
    except Exception:  # noqa: BLE001 - the event must still go out
        return "unknown"
