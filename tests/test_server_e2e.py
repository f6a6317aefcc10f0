"""End to end against a real Prefect server: deploy prefect.yaml, run it on a worker, serve.

A `prefect server start` with its own home and SQLite database, the process work pool,
`prefect --no-prompt deploy --all` from the repository root, a process worker started
outside the repository (the deployment's pull step must bring the run back to it), and
one retraining run triggered with typed parameters. Every process is started here and
stopped here by its id, also when an assertion fails; every wait has a bound.
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

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[1]
POOL = "anomdet-process"
ARTIFACT_KEYS = {"anomdet-metrics", "anomdet-decision", "anomdet-validation"}


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
    assert event["resource"]["prefect.resource.id"] == "anomdet.model.anomdet"
    assert event["resource"]["anomdet.version"] == "1"
    related = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in event["related"]}
    assert related["model-version"] == "anomdet.model.anomdet.v1"
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
    assert "RetrainParams" in str(retrain.parameter_openapi_schema)


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
    # The server checks parameters against the RetrainParams schema before any run.
    with pytest.raises(httpx.HTTPStatusError, match=r"params\.epochs.*less than the minimum"):
        client.create_flow_run_from_deployment(deployment.id, parameters={"params": {"epochs": 0}})

    # Promotions wait for a person's answer; five new labels start a retrain.
    env = {**_anomdet_env(server, tmp_path), "ANOMDET_PROMOTION__REQUIRE_APPROVAL": "true",
           "ANOMDET_REVIEW__RETRAIN_AFTER_LABELS": "5"}
    seed_records(env["ANOMDET_DATABASE_URL"], toy_records())
    worker_log = tmp_path / "worker.log"
    # Started outside the repository on purpose: the deployment's pull step moves the run.
    args = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL]
    with _process(args, env, tmp_path, worker_log):
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters={"params": {"base_model": "tiny-random", "epochs": 2}})
        _approve(server, client, run.id, [worker_log, server.logs])
        final = _final_state(client, run.id, [worker_log, server.logs], timeout=420)
        assert final.state.is_completed(), f"{final.state}\n{_tail(worker_log)}"
        # The outcome at a glance: the state message and the decision's tag.
        assert final.state.message.startswith("promoted v1: f1 "), final.state.message
        assert "records flagged" in final.state.message
        assert "promoted" in final.tags and final.name.startswith("retrain-anomdet-")
        # The promotion's event reaches the server, and the score deployment's trigger
        # answers it with a scoring run, which this worker executes.
        promoted = _wait_for("the anomdet.model.promoted event",
                             lambda: _anomdet_events(server, "anomdet.model.promoted"), 120,
                             [worker_log, server.logs])
        scoring = _wait_for("the scoring run the trigger starts",
                            lambda: _runs_of(client, "score/score-hourly"), 180,
                            [worker_log, server.logs])
        scored = _final_state(client, scoring[0].id, [worker_log, server.logs], timeout=300)
        assert scored.state.is_completed(), f"{scored.state}\n{_tail(worker_log)}"
        reviewed = _review_flags(env["ANOMDET_DATABASE_URL"], 6)
        _labels_start_a_retrain(client, [worker_log, server.logs])
    _check_promoted_event(promoted, run.id)
    flags = _anomdet_events(server, "anomdet.flags.written")
    assert any(e["payload"]["model_version_id"] for e in flags), flags

    with session_scope(get_engine(env["ANOMDET_DATABASE_URL"])) as session:
        relabelled, recorded = repo.recent_runs(session=session, model_name="anomdet")
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
    assert ARTIFACT_KEYS | {"anomdet-top-flagged"} <= keys, keys
    decision = next(a for a in artifacts if a.key == "anomdet-decision")
    assert "PROMOTED" in str(decision.data).upper()


def _approve(server: Server, client: Any, flow_run_id: Any, logs: list[Path]) -> None:
    """Wait for the run to pause for approval, read its form, and approve it through the
    API, as the UI's Resume button does."""
    def paused() -> bool:
        state = client.read_flow_run(flow_run_id).state
        assert state is not None and not state.is_final(), f"{state}\n{_tail(logs[0])}"
        return state.is_paused()

    _wait_for("the run to pause for approval", paused, 420, logs)
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
    checked = _final_state(client, client.create_flow_run_from_deployment(check.id).id, logs,
                           timeout=300)
    assert checked.state.is_completed(), f"{checked.state}\n{_tail(logs[0])}"
    assert checked.state.message.startswith("started "), checked.state.message
    assert "6 labels newer than the champion's training data" in checked.state.message
    [started] = [r for r in _runs_of(client, "retrain/retrain-nightly")
                 if "started-by-check" in r.tags]

    def ended_or_answered() -> Any:
        run = client.read_flow_run(started.id)
        if run.state and run.state.is_paused():
            client.resume_flow_run(started.id, run_input={"decision": "reject",
                                                          "comment": "test over"})
            return None
        return run if run.state and run.state.is_final() else None

    final = _wait_for("the retrain that the check started", ended_or_answered, 420, logs)
    assert final.state.is_completed(), f"{final.state}\n{_tail(logs[0])}"


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
    args = [sys.executable, "-m", "anomdet.cli", "retrain", "--base-model", "tiny-random",
            "--epochs", "2"]
    with _process(args, {**env, "ANOMDET_PROMOTION__FIRST_RUN": "always"}, REPO,
                  cli_log) as cli:
        run = client.create_flow_run_from_deployment(served.id, parameters={"params": params})
        final = _final_state(client, run.id, [*logs, cli_log, server.logs], timeout=420)
        _wait_for("the command-line retrain", lambda: cli.poll() is not None, 420,
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
