"""End to end against a real Prefect server: deploy prefect.yaml, run it on a worker, serve.

A `prefect server start` with its own home and SQLite database, the process work pool,
`prefect --no-prompt deploy --all` from the repository root, a process worker started
outside the repository (the deployment's pull step must bring the run back to it), and
runs as a Prefect user starts them: the custom-run form's flat parameters, a run that
its data stops (and its retry), a promotion approved in the form, the trigger that scores
the promoted model, the check that starts a retrain, and score and check runs stopped by
their timeouts. Every process is started here and stopped here by its id, also when an
assertion fails; every wait has a bound.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from db import repository as repo
from db.engine import get_engine, session_scope
from tests.flows.test_retrain import seed_records, toy_records

pytestmark = [pytest.mark.server, pytest.mark.long]

REPO = Path(__file__).resolve().parents[1]
POOL = "anomdet-process"
ARTIFACT_KEYS = {"anomdet-metrics", "anomdet-decision", "anomdet-validation"}
#: The model the deployed runs train: not the configured "anomdet", so that the scoring
#: run the promotion triggers shows that the model was passed on.
MODEL = "gated"
#: The retraining parameters of the custom-run form, in the flow's order.
RETRAIN_FORM = ["model_name", "base_model", "epochs", "seed", "max_train_rows",
                "learning_rate"]


@dataclass(frozen=True)
class Server:
    """A running server: its API address and the environment its clients need."""

    api_url: str
    env: dict[str, str]
    logs: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Prefect or anomdet setting, plus `extra`.

    The test session points PREFECT_HOME (and, under the harness, the API) elsewhere;
    nothing of that may leak into the server, the CLI, the worker or the flow runs.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "ANOMDET_"))}
    env.update(DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               TRANSFORMERS_VERBOSITY="error", **extra)
    return env


def _tail(path: Path, chars: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no output)"
    return f"--- {path.name} ---\n{text[-chars:]}"


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group we started, wait, then SIGKILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    # Flow-run subprocesses of a worker share its group: none may outlive the test.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@contextmanager
def _process(args: list[str], env: dict[str, str], cwd: Path, log: Path
             ) -> Iterator[subprocess.Popen]:
    """Run `args` in its own process group, output to `log`; always stopped on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            _stop(proc)


def _prefect(server: Server, *args: str, cwd: Path = REPO, timeout: int = 180
             ) -> subprocess.CompletedProcess:
    """One `prefect` CLI command against the server; fails the test if it fails."""
    result = subprocess.run([sys.executable, "-m", "prefect", *args], env=server.env, cwd=cwd,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"prefect {' '.join(args)} exited {result.returncode}:\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _wait_for(what: str, check: Callable[[], Any], timeout: float, logs: list[Path],
              every: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy; fail with the logs after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n"
                + "\n".join(_tail(p) for p in logs))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`prefect server start` on a free port with a private home and SQLite database."""
    root = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = _clean_env(PREFECT_HOME=str(root / "home"), PREFECT_API_URL=api_url)
    server_env = {**env, "PREFECT_UI_ENABLED": "false",
                  # No scheduled runs while the test runs: only the ones it triggers.
                  "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}
    server_env.pop("PREFECT_API_URL")
    log = root / "server.log"
    args = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
            "--port", str(port)]
    with _process(args, server_env, root, log) as proc:
        def healthy() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}\n{_tail(log)}")
            try:
                return httpx.get(f"{api_url}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for("the server's health check", healthy, 180, [log], every=1.0)
        yield Server(api_url, env, log)


@pytest.fixture
def client(server: Server) -> Iterator[Any]:
    """A Prefect API client bound to the test server, whatever the session's settings."""
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(server.api_url) as prefect_client:
        yield prefect_client


def _anomdet_env(server: Server, work: Path) -> dict[str, str]:
    """Worker environment: anomdet on a private SQLite database, small training."""
    return {**server.env,
            "ANOMDET_DATABASE_URL": f"sqlite:///{work / 'anomdet.db'}",
            "ANOMDET_ARTIFACTS_DIR": str(work / "artifacts"),
            # Runs started without parameters (by the check flow) train the tiny model too.
            "ANOMDET_TRAINING__BASE_MODEL": "tiny-random",
            "ANOMDET_TRAINING__MAX_LENGTH": "48",
            "ANOMDET_TRAINING__LEARNING_RATE": "0.001",
            # Forty steps, not the default 400: what is tested here is the runs' way
            # through the server and the worker, not the training.
            "ANOMDET_TRAINING__MIN_STEPS": "40",
            "ANOMDET_PROMOTION__BOOTSTRAP_RESAMPLES": "200",
            # Poll for work every second instead of every 10s.
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1"}


def _final_state(client: Any, flow_run_id: Any, logs: list[Path], timeout: float) -> Any:
    def done() -> Any:
        run = client.read_flow_run(flow_run_id)
        return run if run.state and run.state.is_final() else None

    return _wait_for(f"flow run {flow_run_id} to finish", done, timeout, logs)


def _anomdet_events(server: Server, name: str) -> list[dict[str, Any]]:
    """The events of that name the server has stored, newest first."""
    response = httpx.post(f"{server.api_url}/events/filter", timeout=30,
                          json={"filter": {"event": {"name": [name]}}, "limit": 50})
    response.raise_for_status()
    return response.json()["events"]


def _runs_of(client: Any, deployment_name: str) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deployment = client.read_deployment_by_name(deployment_name)
    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))


def _check_promoted_event(events: list[dict[str, Any]], flow_run_id: Any) -> None:
    [event] = events
    assert event["resource"]["prefect.resource.id"] == f"anomdet.model.{MODEL}"
    assert event["resource"]["anomdet.version"] == "1"
    related = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in event["related"]}
    assert related["model-version"] == f"anomdet.model.{MODEL}.v1"
    assert related["flow-run"] == f"prefect.flow-run.{flow_run_id}"
    payload = event["payload"]
    assert payload["version"] == 1 and payload["flags_written"] >= 0
    assert 0 <= payload["metrics"]["f1"] <= 1 and payload["artifact_uri"]


def _create_failure_automation(server: Server, work: Path) -> str:
    """automations/notify-on-failure.yaml through `prefect automation create`, with a
    webhook notification block of the test server in place of the placeholder id."""
    code = ("from prefect.blocks.notifications import CustomWebhookNotificationBlock as B; "
            "print(B(name='anomdet', url='http://127.0.0.1:9/hook').save('anomdet-alerts'))")
    made = subprocess.run([sys.executable, "-c", code], env=server.env, capture_output=True,
                          text=True, timeout=180, check=False)
    assert made.returncode == 0, made.stderr[-3000:]
    block_id = made.stdout.strip().splitlines()[-1]
    text = (REPO / "automations" / "notify-on-failure.yaml").read_text()
    assert "00000000-0000-0000-0000-000000000000" in text
    path = work / "notify-on-failure.yaml"
    path.write_text(text.replace("00000000-0000-0000-0000-000000000000", block_id))
    _prefect(server, "automation", "create", "--from-file", str(path))
    return block_id


def _check_deployments(client: Any) -> None:
    retrain = client.read_deployment_by_name("retrain/retrain-nightly")
    score = client.read_deployment_by_name("score/score-hourly")
    check = client.read_deployment_by_name("check/check-labels")
    assert retrain.work_pool_name == score.work_pool_name == check.work_pool_name == POOL
    assert [s.schedule.cron for s in check.schedules] == ["*/10 * * * *"]
    assert check.parameters == {"retrain_deployment": "retrain/retrain-nightly"}
    assert retrain.global_concurrency_limit.limit == 1
    assert [s.schedule.cron for s in retrain.schedules] == ["0 2 * * *"]
    assert [s.schedule.cron for s in score.schedules] == ["15 * * * *"]
    # The pull step brings each run back to this checkout.
    [step] = retrain.pull_steps
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
    _check_form(retrain.parameter_openapi_schema, RETRAIN_FORM)
    _check_form(score.parameter_openapi_schema, ["model_name", "chunks"])
    _check_form(check.parameter_openapi_schema, ["retrain_deployment", "model_name"])
    epochs = retrain.parameter_openapi_schema["properties"]["epochs"]
    assert (epochs["type"], epochs["minimum"], epochs["maximum"]) == ("integer", 1, 100)
    assert score.parameter_openapi_schema["properties"]["chunks"]["default"] == 4


def _check_form(schema: dict[str, Any], names: list[str]) -> None:
    """The custom-run form: one field per parameter, in order, each described, none a
    nested model or a choice of types (`int` or `None`) to be picked first."""
    fields = schema["properties"]
    assert sorted(fields, key=lambda n: fields[n]["position"]) == names, fields
    assert not schema.get("definitions") and "$ref" not in str(schema), schema
    assert all(field["type"] in ("string", "integer", "number") for field in fields.values())
    for name, field in fields.items():
        assert len(field.get("description") or "") > 15, (name, field)
    assert schema.get("required", []) == []  # a run may leave every field empty


def _logs_of(server: Server, flow_run_id: Any) -> list[dict[str, Any]]:
    """The run's logs as the UI shows them, oldest first."""
    response = httpx.post(f"{server.api_url}/logs/filter", timeout=30, json={
        "logs": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "sort": "TIMESTAMP_ASC",
        "limit": 200})
    response.raise_for_status()
    return response.json()


def _events_about(server: Server, flow_run_id: Any) -> list[str]:
    """The names of the anomdet events that a flow run emitted."""
    response = httpx.post(f"{server.api_url}/events/filter", timeout=30, json={
        "filter": {"event": {"prefix": ["anomdet."]},
                   "related": {"id": [f"prefect.flow-run.{flow_run_id}"]}},
        "limit": 50})
    response.raise_for_status()
    return sorted(e["event"] for e in response.json()["events"])


def _stopped_by_its_data(server: Server, client: Any, deployment: Any, env: dict[str, str],
                         work: Path, logs: list[Path]) -> None:
    """A run on records of one class ends Failed with the gate's words, no traceback in
    its logs and one event; retried as the UI's Retry does, it fails the same way under
    the name it was created with."""
    from prefect.states import AwaitingRetry

    url = f"sqlite:///{work / 'one-class.db'}"
    records = toy_records()
    records.loc[records["label"].notna(), "label"] = 0
    seed_records(url, records)
    run = client.create_flow_run_from_deployment(
        deployment.id, parameters={"model_name": MODEL},
        job_variables={"env": {"ANOMDET_DATABASE_URL": url}})
    created = run.name
    for attempt in (1, 2):
        final = _final_state(client, run.id, logs, timeout=300)
        assert final.state.is_failed() and final.run_count == attempt, final.state
        assert final.name == created, (created, final.name)
        assert final.state.message.startswith("data validation failed:\n- expect_")
        assert "failed-validation" in final.tags
        lines = _wait_for("the failed run's last log line", lambda: [
            log for log in _logs_of(server, run.id)
            if log["message"].startswith("Finished in state Failed")], 60, logs)
        text = "\n".join(log["message"] for log in _logs_of(server, run.id))
        assert "Traceback" not in text and "unexpected exception" not in text, text[-3000:]
        assert any("validation FAILED on" in log["message"] for log in _logs_of(
            server, run.id)), "anomdet's own lines reach the run's logs"
        assert lines
        if attempt == 1:
            client.set_flow_run_state(run.id, AwaitingRetry(), force=True)
    events = _wait_for("the failed runs' events",
                       lambda: _events_about(server, run.id) or None, 60, logs)
    time.sleep(3)  # a second event of one failure would have arrived by now
    assert _events_about(server, run.id) == ["anomdet.validation.failed"] * 2, events


def _timeouts_bound_score_and_check(client: Any, logs: list[Path]) -> None:
    """A scoring run and a check run that hang (on a database that accepts connections
    and never answers) end TimedOut after ANOMDET_SCORE/CHECK_TIMEOUT_MINUTES, given in
    the run's environment, instead of holding their deployment's one slot."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql+psycopg://anomdet@127.0.0.1:{silent.getsockname()[1]}/anomdet"
        for name in ("score/score-hourly", "check/check-labels"):
            setting = f"ANOMDET_{name.split('/')[0].upper()}_TIMEOUT_MINUTES"
            run = client.create_flow_run_from_deployment(
                client.read_deployment_by_name(name).id, job_variables={"env": {
                    setting: "0.05", "ANOMDET_DATABASE_URL": url,  # 3 s
                    "ANOMDET_CONNECT_TIMEOUT": "300"}})
            final = _final_state(client, run.id, logs, timeout=240)
            assert final.state.is_failed() and final.state.name == "TimedOut", final.state
            assert "exceeded timeout of 3.0 second" in final.state.message, final.state


def test_deployed_retraining_runs_on_a_worker_and_publishes_artifacts(
    server: Server, client: Any, tmp_path: Path
) -> None:
    _prefect(server, "work-pool", "create", POOL, "--type", "process")
    _prefect(server, "--no-prompt", "deploy", "--all")
    _check_deployments(client)
    block_id = _create_failure_automation(server, tmp_path)
    [notify] = client.read_automations_by_name("anomdet failures")
    assert notify.trigger.expect == {"anomdet.run.failed", "anomdet.validation.failed"}
    assert str(notify.actions[0].block_document_id) == block_id
    deployment = client.read_deployment_by_name("retrain/retrain-nightly")
    # The server checks each parameter against its bounds before any run.
    with pytest.raises(httpx.HTTPStatusError, match=r"epochs.*less than the minimum"):
        client.create_flow_run_from_deployment(deployment.id, parameters={"epochs": 0})

    # Promotions wait for a person's answer; five new labels start a retrain.
    env = {**_anomdet_env(server, tmp_path), "ANOMDET_PROMOTION__REQUIRE_APPROVAL": "true",
           "ANOMDET_REVIEW__RETRAIN_AFTER_LABELS": "5"}
    seed_records(env["ANOMDET_DATABASE_URL"], toy_records())
    worker_log = tmp_path / "worker.log"
    logs = [worker_log, server.logs]
    # Started outside the repository on purpose: the deployment's pull step moves the run.
    args = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL]
    with _process(args, env, tmp_path, worker_log):
        _stopped_by_its_data(server, client, deployment, env, tmp_path, logs)
        run = client.create_flow_run_from_deployment(deployment.id, parameters={
            "model_name": MODEL, "base_model": "tiny-random", "epochs": 2})
        _approve(server, client, run.id, logs)
        final = _final_state(client, run.id, logs, timeout=420)
        assert final.state.is_completed(), f"{final.state}\n{_tail(worker_log)}"
        # The outcome at a glance: the state message, who approved, the decision's tag,
        # under the name the run was created with.
        assert final.state.message.startswith("promoted v1: f1 "), final.state.message
        assert "records flagged" in final.state.message
        assert final.state.message.endswith(", approved by Ada"), final.state.message
        assert "promoted" in final.tags and "awaiting-approval" not in final.tags
        assert final.name == run.name
        # The promotion's event reaches the server, and the score deployment's trigger
        # answers it with a scoring run of the promoted model, which this worker executes.
        promoted = _wait_for("the anomdet.model.promoted event",
                             lambda: _anomdet_events(server, "anomdet.model.promoted"), 120,
                             logs)
        scoring = _wait_for("the scoring run the trigger starts",
                            lambda: _runs_of(client, "score/score-hourly"), 180, logs)
        scored = _final_state(client, scoring[0].id, logs, timeout=300)
        assert scored.state.is_completed(), f"{scored.state}\n{_tail(worker_log)}"
        assert scored.parameters["model_name"] == MODEL, scored.parameters
        # The backfill scored every record before the flip: v1 of the promoted model.
        assert scored.state.message.startswith("nothing new to score: v1 "), scored.state
        reviewed = _review_flags(env["ANOMDET_DATABASE_URL"], 6)
        _labels_start_a_retrain(client, logs)
        _timeouts_bound_score_and_check(client, logs)
    _check_promoted_event(promoted, run.id)
    flags = _anomdet_events(server, "anomdet.flags.written")
    assert flags and all(e["payload"]["scored"] > 0 for e in flags), flags
    assert _events_about(server, scored.id) == []  # nothing scored, nothing said

    with session_scope(get_engine(env["ANOMDET_DATABASE_URL"])) as session:
        relabelled, recorded = repo.recent_runs(session=session, model_name=MODEL)
    # The retrain that the labels started read them: six labels newer than v1's data.
    assert relabelled.details["labels"]["reviewed"] == len(reviewed) == 6
    assert relabelled.details["labels"]["new"] == 6 and relabelled.state == "completed"
    assert recorded.details["approval"]["answer"] == "approve"
    assert recorded.details["approval"]["reviewer"] == "Ada"
    assert recorded.reason.endswith("Approved by Ada: flags look right."), recorded.reason
    assert recorded.flow_run_id == str(run.id)
    assert recorded.parameters["base_model"] == "tiny-random" and recorded.parameters["epochs"] == 2
    assert recorded.decision == "promoted", recorded.reason

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    keys = {a.key for a in artifacts}
    assert {k.replace("anomdet-", f"{MODEL}-") for k in ARTIFACT_KEYS} | {
        f"{MODEL}-top-flagged"} <= keys, keys
    decision = next(a for a in artifacts if a.key == f"{MODEL}-decision")
    assert "PROMOTED" in str(decision.data).upper()


def _approve(server: Server, client: Any, flow_run_id: Any, logs: list[Path]) -> None:
    """Wait for the run to pause for approval and say so, read its form, and approve it
    through the API, as the form's Resume does."""
    def paused() -> bool:
        run = client.read_flow_run(flow_run_id)
        state = run.state
        assert state is not None and not state.is_final(), f"{state}\n{_tail(logs[0])}"
        return state.is_paused() and (state.message or "").startswith("awaiting approval")

    _wait_for("the run to pause for approval", paused, 420, logs)
    assert "awaiting-approval" in client.read_flow_run(flow_run_id).tags
    inputs = httpx.post(f"{server.api_url}/flow_runs/{flow_run_id}/input/filter", timeout=30,
                        json={"prefix": "paused-", "limit": 10})
    inputs.raise_for_status()
    form = {item["key"].rsplit("-", 1)[-1]: item["value"] for item in inputs.json()}
    assert "Promote this challenger?" in form["description"]
    assert '"decision"' in form["schema"] and '"reviewer"' in form["schema"]
    # A busy server answers 503 and changes nothing; the UI's user presses Resume again.
    for _ in range(5):
        answer = httpx.post(f"{server.api_url}/flow_runs/{flow_run_id}/resume", timeout=30,
                            json={"run_input": {"decision": "approve", "reviewer": "Ada",
                                                "comment": "flags look right"}})
        if answer.status_code != 503:
            break
        time.sleep(2)
    answer.raise_for_status()
    assert answer.json()["status"] == "ACCEPT", answer.json()


def _review_flags(url: str, count: int) -> list[str]:
    """Reviewers give their verdict on `count` flags, with the README's UPDATE."""
    engine = get_engine(url)
    with session_scope(engine) as session:
        ids = [r["record_id"] for r in repo.flagged_rows(session=session, limit=count)]
    with engine.begin() as conn:
        for n, record_id in enumerate(ids):
            conn.execute(sa.text("UPDATE records SET label = :y WHERE id = :id"),
                         {"y": n % 2, "id": int(record_id)})
    return ids


def _labels_start_a_retrain(client: Any, logs: list[Path]) -> None:
    """The check deployment, run now instead of at its ten minutes, starts a retrain of
    retrain-nightly on the worker; it may wait for approval, which is refused here."""
    check = client.read_deployment_by_name("check/check-labels")
    checked = _final_state(client, client.create_flow_run_from_deployment(
        check.id, parameters={"model_name": MODEL}).id, logs, timeout=300)
    assert checked.state.is_completed(), f"{checked.state}\n{_tail(logs[0])}"
    assert checked.state.message.startswith(f"started retrain-{MODEL}-"), checked.state.message
    assert "6 labels newer than the champion's training data" in checked.state.message
    [started] = [r for r in _runs_of(client, "retrain/retrain-nightly")
                 if "started-by-check" in r.tags]
    # Named as it was created, the name the check's message gives.
    assert started.name in checked.state.message and started.parameters["model_name"] == MODEL

    def ended_or_answered() -> Any:
        run = client.read_flow_run(started.id)
        if run.state and run.state.is_paused() and run.state.message:  # said why: answer
            client.resume_flow_run(started.id, run_input={"decision": "reject",
                                                          "comment": "test over"})
            return None
        return run if run.state and run.state.is_final() else None

    final = _wait_for("the retrain that the check started", ended_or_answered, 420, logs)
    assert final.state.is_completed(), f"{final.state}\n{_tail(logs[0])}"
    assert final.name == started.name


def test_serve_registers_both_flows_and_runs_them_in_process(
    server: Server, client: Any, tmp_path: Path
) -> None:
    from flows.serve import CHECK_SERVED, RETRAIN_SERVED, SCORE_SERVED

    env = _anomdet_env(server, tmp_path)
    seed_records(env["ANOMDET_DATABASE_URL"], toy_records(n=100))
    code = ("from flows.serve import serve_all; "
            "serve_all(retrain_cron='30 3 * * *', score_cron='*/20 * * * *')")
    log = tmp_path / "serve.log"
    with _process([sys.executable, "-c", code], env, REPO, log):
        def registered() -> Any:
            # `serve` registers its deployments one after another: wait for all three.
            try:
                return (client.read_deployment_by_name(f"retrain/{RETRAIN_SERVED}"),
                        client.read_deployment_by_name(f"score/{SCORE_SERVED}"),
                        client.read_deployment_by_name(f"check/{CHECK_SERVED}"))
            except Exception:  # not there yet
                return None

        retrain, score, check = _wait_for("the served deployments", registered, 180, [log])
        assert check.parameters == {"retrain_deployment": f"retrain/{RETRAIN_SERVED}"}
        assert [s.schedule.cron for s in retrain.schedules] == ["30 3 * * *"]
        assert [s.schedule.cron for s in score.schedules] == ["*/20 * * * *"]
        assert retrain.global_concurrency_limit.limit == 1
        # Records but no model yet: the served scoring run must be executed by the
        # serving process and complete, saying that there is nothing to score it with.
        run = client.create_flow_run_from_deployment(score.id)
        final = _final_state(client, run.id, [log, server.logs], timeout=240)
        assert final.state.is_completed(), f"{final.state}\n{_tail(log)}"
        assert "no champion" in (final.state.message or ""), final.state.message
        _check_one_retrain_at_a_time(server, client, retrain, env, tmp_path, [log])


def _check_one_retrain_at_a_time(server: Server, client: Any, served: Any, env: dict[str, str],
                                 work: Path, logs: list[Path]) -> None:
    """A served retraining run and an `anomdet retrain` against the same server, started
    together, hold the model's one slot in turn (flows.slots)."""
    seed_records(env["ANOMDET_DATABASE_URL"], toy_records(300))  # enough labels to train
    params = {"base_model": "tiny-random", "epochs": 2}
    cli_log = work / "cli.log"
    args = [sys.executable, "-m", "cli", "retrain", "--base-model", "tiny-random",
            "--epochs", "2"]
    with _process(args, {**env, "ANOMDET_PROMOTION__FIRST_RUN": "always"}, REPO,
                  cli_log) as cli:
        run = client.create_flow_run_from_deployment(served.id, parameters=params)
        # Either may wait for the other's whole training: two trainings in turn.
        final = _final_state(client, run.id, [*logs, cli_log, server.logs], timeout=840)
        _wait_for("the command-line retrain", lambda: cli.poll() is not None, 840,
                  [cli_log, *logs])
    assert cli.returncode == 0, _tail(cli_log)
    assert final.state.is_completed(), f"{final.state}\n{_tail(logs[0])}"
    limit = client.read_global_concurrency_limit_by_name("anomdet-retrain-anomdet")
    assert limit.limit == 1 and limit.active_slots == 0
    with session_scope(get_engine(env["ANOMDET_DATABASE_URL"])) as session:
        runs = sorted(repo.recent_runs(session=session, model_name="anomdet"),
                      key=lambda r: r.started_at)
    assert [r.state for r in runs] == ["completed", "completed"], [r.reason for r in runs]
    assert runs[0].ended_at <= runs[1].started_at, [(r.started_at, r.ended_at) for r in runs]
    assert {r.flow_run_id for r in runs} >= {str(run.id)}
    # The command line's run carries the tags a deployment's run has.
    [by_cli] = [r for r in runs if r.flow_run_id != str(run.id)]
    cli_run = client.read_flow_run(by_cli.flow_run_id)
    assert {"anomdet", "retrain"} <= set(cli_run.tags), cli_run.tags
