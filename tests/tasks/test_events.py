"""anomdet's Prefect events: what each outcome emits, about which model and version, with
which figures; and that an event can neither fail a run nor leak a password."""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np
import pytest
from prefect.events import Event
from prefect.events.worker import EventsWorker
from prefect.exceptions import EventTooLarge
from prefect.testing.fixtures import asserting_events_worker  # noqa: F401 - a fixture
from typer.testing import CliRunner

from anomdet.errors import DataValidationError
from tasks import events
from tests.anomdet.test_cli import _promote_copy_of_champion
from tests.flows.test_retrain import seed_records, toy_records

# The events worker talks to the session's temporary API, never to one it starts itself.
pytestmark = pytest.mark.usefixtures("prefect_harness")


def _sent(worker: EventsWorker) -> list[Event]:
    """The anomdet events the asserting client received, in order."""
    worker.wait_until_empty()
    return [e for e in worker._client.events if e.event.startswith("anomdet.")]


def _one(sent: list[Event], name: str) -> Event:
    found = [e for e in sent if e.event == name]
    assert len(found) == 1, [e.event for e in sent]
    return found[0]


def _roles(event: Event) -> dict[str, str]:
    return {r.role: r.id for r in event.related}


def test_scrub_masks_url_passwords_and_keeps_plain_json() -> None:
    payload = {"reason": "cannot connect to postgresql+psycopg://anomdet:s3cr=t@db:5432/x",
               "nested": [{"url": "https://user:pw@example.org/a"}],
               "f1": np.float32(0.5), "n": np.int64(7), "auc": math.nan, "ok": True}
    clean = events.scrub(payload)
    assert "s3cr=t" not in str(clean) and "pw@" not in str(clean)
    assert clean["reason"].endswith("postgresql+psycopg://anomdet:***@db:5432/x")
    assert clean["nested"] == [{"url": "https://user:***@example.org/a"}]
    assert clean["f1"] == 0.5 and clean["n"] == 7 and type(clean["n"]) is int
    assert clean["auc"] is None and clean["ok"] is True
    assert len(events.scrub("x" * 10_000)) < 2100


def test_an_event_that_cannot_be_sent_is_dropped_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def too_large(*args: Any, **kwargs: Any) -> None:
        raise EventTooLarge(2_000_000, 1_500_000)

    monkeypatch.setattr(events, "emit_event", too_large)
    assert events.emit(events.PROMOTED, "anomdet", version=1) is None
    assert "anomdet.model.promoted was not emitted" in caplog.text


def test_the_model_is_the_resource_and_the_version_a_related_one(
    asserting_events_worker: EventsWorker,  # noqa: F811
) -> None:
    events.emit_rolled_back("fraud", 3, previous_version=5, reason="v5 misses fraud",
                            run_id=12)
    [event] = _sent(asserting_events_worker)
    assert event.event == "anomdet.model.rolled_back"
    assert event.resource.id == "anomdet.model.fraud"
    assert event.resource["anomdet.version"] == "3"
    assert _roles(event) == {"model-version": "anomdet.model.fraud.v3",
                             "previous-champion": "anomdet.model.fraud.v5"}
    assert event.payload == {"run_id": 12, "version": 3, "previous_version": 5,
                             "reason": "v5 misses fraud"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_promotion_rejection_and_rollback_emit_their_events(
    anomdet_env: str, monkeypatch: pytest.MonkeyPatch,
    asserting_events_worker: EventsWorker,  # noqa: F811
) -> None:
    from cli.app import app
    from flows.retrain import retrain

    seed_records(anomdet_env, toy_records())
    first = retrain()
    assert first.decision == "promoted", first.reason
    # One epoch at a learning rate far too small: a challenger that cannot win.
    monkeypatch.setenv("ANOMDET_TRAINING__LEARNING_RATE", "0.0000001")
    second = retrain(epochs=1, seed=5)
    assert second.decision == "rejected"
    _promote_copy_of_champion(anomdet_env)
    back = CliRunner().invoke(app, ["rollback", "1", "--reason", "v2 misses fraud"])
    assert back.exit_code == 0, back.output

    sent = _sent(asserting_events_worker)
    assert [e.event for e in sent] == [events.PROMOTED, events.FLAGS_WRITTEN,
                                       events.REJECTED, events.ROLLED_BACK]
    promoted = _one(sent, events.PROMOTED)
    assert promoted.resource.id == "anomdet.model.anomdet"
    assert _roles(promoted)["model-version"] == "anomdet.model.anomdet.v1"
    payload = promoted.payload
    assert payload["version"] == 1 and payload["previous_version"] is None
    assert payload["run_id"] == first.run_id
    assert payload["metrics"]["f1"] == pytest.approx(first.challenger["f1"], abs=1e-6)
    assert payload["flags_written"] == first.flags_written
    assert 0 < payload["threshold"] < 1 and payload["artifact_uri"]
    # Prefect adds the run the event came from.
    assert "flow-run" in _roles(promoted)

    flags = _one(sent, events.FLAGS_WRITTEN)
    assert flags.payload["flagged"] == first.flags_written
    assert flags.payload["scored"] >= flags.payload["flagged"]

    rejected = _one(sent, events.REJECTED)
    assert rejected.resource.id == "anomdet.model.anomdet"
    assert rejected.resource["anomdet.version"] == "1"  # the champion that stays
    assert rejected.payload["reason"] == second.reason
    assert rejected.payload["champion_metrics"]["f1"] == pytest.approx(
        second.champion["f1"], abs=1e-6)

    rolled = _one(sent, events.ROLLED_BACK)
    assert rolled.payload["version"] == 1 and rolled.payload["previous_version"] == 2
    assert rolled.payload["reason"] == "v2 misses fraud"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_failed_validation_emits_one_event_only(
    anomdet_env: str, asserting_events_worker: EventsWorker,  # noqa: F811
) -> None:
    from flows.retrain import retrain

    frame = toy_records()
    frame.loc[frame["label"].notna(), "label"] = 0  # one class only
    seed_records(anomdet_env, frame)
    with pytest.raises(DataValidationError):
        retrain()

    # One failure, one event: the failure automation notifies once.
    sent = _sent(asserting_events_worker)
    assert [e.event for e in sent] == [events.VALIDATION_FAILED]
    failed = _one(sent, events.VALIDATION_FAILED)
    assert failed.resource.id == "anomdet.model.anomdet"
    assert failed.payload["summary"]["success"] is False
    assert failed.payload["reason"]
    assert "flow-run" in _roles(failed)  # Prefect adds the run it came from


def test_no_flags_written_event_when_nothing_was_scored(
    asserting_events_worker: EventsWorker,  # noqa: F811
) -> None:
    assert events.emit_flags_written("anomdet", flagged=0, scored=0, version=1) is None
    events.emit_flags_written("anomdet", flagged=2, scored=30, version=1)
    [event] = _sent(asserting_events_worker)
    assert event.payload["scored"] == 30 and event.payload["flagged"] == 2


def test_a_run_stopped_by_its_data_emits_no_failed_run_event(
    asserting_events_worker: EventsWorker,  # noqa: F811
) -> None:
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Failed

    class Flow:
        name = "retrain"

    report = type("Report", (), {"describe_failures": lambda self: "- too few anomalies"})()
    gate = DataValidationError(report)
    run = FlowRun(flow_id=uuid.uuid4(), name="calm-otter", parameters={"model_name": "fraud"})
    events.on_run_failed(Flow(), run, Failed(message=str(gate), data=gate))
    events.on_run_failed(Flow(), run, Failed(message="boom", data=RuntimeError("boom")))
    [event] = _sent(asserting_events_worker)
    assert event.event == events.RUN_FAILED and event.payload["message"] == "boom"
    assert event.resource.id == "anomdet.model.fraud"  # the model the run was given


def test_a_failed_run_event_names_the_run_and_hides_the_password(
    asserting_events_worker: EventsWorker,  # noqa: F811
) -> None:
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Failed

    class Flow:
        name = "score"

    run = FlowRun(flow_id=uuid.uuid4(), name="calm-otter")
    state = Failed(message="connection refused: postgresql+psycopg://app:hunter2@db/x")
    events.on_run_failed(Flow(), run, state)
    [event] = _sent(asserting_events_worker)
    assert event.event == "anomdet.run.failed"
    assert event.resource.id == "anomdet.model.anomdet"
    assert _roles(event)["flow-run"] == f"prefect.flow-run.{run.id}"
    assert event.payload["flow"] == "score" and event.payload["flow_run"] == "calm-otter"
    assert event.payload["message"] == (
        "connection refused: postgresql+psycopg://app:***@db/x")
    assert "hunter2" not in event.model_dump_json()
