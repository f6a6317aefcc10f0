"""The command line as a user drives it: import, retrain, status, flagged, models, rollback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from db import repository as repo
from db.engine import get_engine, session_scope
from tests.databases import only_on
from tests.flows.test_retrain import toy_records
from tests.versions import promote

pytestmark = pytest.mark.usefixtures("prefect_harness")
# Wide enough that rich tables do not abbreviate cells.
runner = CliRunner(env={"COLUMNS": "200"})


def _csv(tmp_path: Path) -> Path:
    frame = toy_records(400)
    path = tmp_path / "records.csv"
    frame[["id", "text", "label"]].to_csv(path, index=False)
    return path


@pytest.mark.long
@only_on("postgresql")
def test_import_retrain_inspect_and_roll_back(anomdet_env: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["import-csv", str(_csv(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "imported 400 records" in result.output

    first = runner.invoke(app, ["retrain", "--base-model", "tiny-random", "--epochs", "2"])
    assert first.exit_code == 0, first.output
    assert "decision: promoted" in first.output and "f1" in first.output
    # A second run is recorded whatever it decides; force a promotion for the rollback.
    second = runner.invoke(app, ["retrain", "--epochs", "2", "--seed", "7"],
                           env={"ANOMDET_PROMOTION__BOOTSTRAP_RESAMPLES": "0",
                                "ANOMDET_PROMOTION__GUARD_PR_AUC_TOLERANCE": "1",
                                "ANOMDET_PROMOTION__GUARD_RECALL_TOLERANCE": "1"})
    assert second.exit_code == 0, second.output
    assert "decision:" in second.output

    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0 and "champion: anomdet version" in status.output
    flagged = runner.invoke(app, ["flagged", "--limit", "5"])
    assert flagged.exit_code == 0 and "anomdet_flagged" in flagged.output
    models = runner.invoke(app, ["models"])
    assert models.exit_code == 0 and "champion" in models.output

    if "decision: promoted" not in second.output:
        _promote_copy_of_champion(anomdet_env)
    back = runner.invoke(app, ["rollback", "1", "--reason", "version 2 misses fraud"])
    assert back.exit_code == 0, back.output
    assert "version 1 is champion again" in back.output
    status = runner.invoke(app, ["status"])
    assert "version 1" in status.output and "rolled_back" in status.output
    missing = runner.invoke(app, ["rollback", "99", "--reason", "x"])
    assert missing.exit_code != 0 and "no version 99" in missing.output


def _promote_copy_of_champion(url: str) -> None:
    """Make a version 2 champion directly, so that there is something to roll back from."""
    with session_scope(get_engine(url)) as session:
        v1 = repo.get_champion(session=session, model_name="anomdet")
        fields = {k: getattr(v1, k) for k in ("model_name", "base_model", "artifact_uri",
                                              "weights_sha256", "data_fingerprint",
                                              "hyperparameters", "metrics", "threshold")}
        promote(session, expected_champion_id=v1.id, **fields)


@only_on("sqlite")
def test_bad_csv_exits_non_zero_and_says_where(anomdet_env: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text,label\n1,ok,0\n2,bad label,yes\n")
    result = runner.invoke(app, ["import-csv", str(bad)])
    assert result.exit_code == 1
    assert "line(s) 3" in result.output and "nothing imported" in result.output


def test_retrain_without_records_table_fails_clearly(anomdet_env: str) -> None:
    result = runner.invoke(app, ["retrain"])
    assert result.exit_code == 1
    assert "records table 'records' does not exist" in result.output


@only_on("sqlite")
def test_demo_seeds_once_and_retrains_with_a_new_seed_each_time(anomdet_env: str) -> None:
    args = ["demo", "--rows", "400", "--base-model", "tiny-random", "--epochs", "2",
            "--learning-rate", "0.001"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "seeded 400 demo records" in first.output and "decision:" in first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "seeded" not in second.output and "decision:" in second.output
    with session_scope(get_engine(anomdet_env)) as session:
        runs = repo.recent_runs(session=session, model_name="anomdet")
    assert [r.parameters["seed"] for r in runs] == [43, 42]
    assert all(r.state == "completed" for r in runs)


def test_unknown_variables_are_refused_with_the_nearest_name() -> None:
    from anomdet.settings import check_environment

    check_environment({"ANOMDET_TRAINING__EPOCHS": "2", "ANOMDET_DEBUG": "1", "HOME": "/"})
    with pytest.raises(ValueError, match=r"unknown variable ANOMDET_TRAINNG__EPOCHS \(did you "
                                         r"mean ANOMDET_TRAINING__EPOCHS\?\)"):
        check_environment({"ANOMDET_TRAINNG__EPOCHS": "2"})
    with pytest.raises(ValueError, match=r"ANOMDET_CONECT_TIMEOUT \(did you mean "
                                         r"ANOMDET_CONNECT_TIMEOUT\?\)"):
        check_environment({"ANOMDET_CONECT_TIMEOUT": "2"})


def test_database_errors_name_the_place_and_hide_the_password() -> None:
    import sqlalchemy as sa

    from anomdet.errors import explain

    url = "postgresql+psycopg://anomdet:hunter2@db.example:6543/prod"
    refused = sa.exc.OperationalError("SELECT 1", {}, Exception(
        'connection failed: connection to server at "db.example", port 6543 failed: '
        "Connection refused (password hunter2 was sent)\n\tIs the server running?"))
    said = explain(refused, database_url=url)
    assert said.startswith("cannot connect to PostgreSQL at db.example:6543: connection refused")
    assert "hunter2" not in said and "\n" not in said
    timeout = sa.exc.OperationalError("SELECT 1", {}, Exception("connection timeout expired"))
    assert "did not answer within 3 s" in explain(timeout, database_url=url, connect_timeout=3)
    assert explain(RuntimeError("boom\nsecond line")) == "RuntimeError: boom"


def test_failure_records_stay_off_the_terminal() -> None:
    import logging

    from cli.runtime import _NoFailureTracebacks

    quiet = _NoFailureTracebacks()

    def record(name: str, level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, msg, None, None)

    assert quiet.filter(record("prefect.flow_runs", logging.INFO, "Beginning flow run"))
    assert not quiet.filter(record("prefect.task_runs", logging.ERROR, "Task run failed"))
    assert not quiet.filter(record("prefect.flow_runs", logging.INFO,
                                   "Finished in state Failed('boom')"))
    assert quiet.filter(record("httpx", logging.ERROR, "not ours to hide"))


def test_retrain_takes_the_backfills_task_runner_as_the_setting_it_sets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMDET_DATABASE_URL", f"sqlite:///{tmp_path / 'a.db'}")
    # Set here so that the test's end restores it: the command sets it for its own run.
    monkeypatch.setenv("ANOMDET_SCORING__BACKFILL_TASK_RUNNER", "default")
    monkeypatch.setenv("ANOMDET_SCORING__DASK_WORKERS", "2")
    result = runner.invoke(app, ["retrain", "--task-runner", "threads", "--dask-workers", "3"])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and "'default' or 'dask'" in result.output
    assert "BACKFILL_TASK_RUNNER=threads" in result.output


def test_queue_and_models_before_any_champion_say_so(anomdet_env: str) -> None:
    from db.engine import migrate

    migrate(get_engine(anomdet_env))  # the read-only commands never migrate
    queue = runner.invoke(app, ["queue"])
    assert queue.exit_code == 0, queue.output
    assert "no champion of 'anomdet' yet" in queue.output
    models = runner.invoke(app, ["models"])
    assert models.exit_code == 0 and "no versions of 'anomdet' yet" in models.output


def test_approval_without_a_server_stops_before_training(
        anomdet_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    assert runner.invoke(app, ["import-csv", str(_csv(tmp_path))]).exit_code == 0
    monkeypatch.setenv("ANOMDET_PROMOTION__REQUIRE_APPROVAL", "true")
    with temporary_settings(updates={PREFECT_API_URL: None}):
        result = runner.invoke(app, ["retrain"])
    assert result.exit_code == 1
    assert result.output.startswith("error: ANOMDET_PROMOTION__REQUIRE_APPROVAL=true")
    assert "PREFECT_API_URL is not set" in result.output and "Traceback" not in result.output
    with session_scope(get_engine(anomdet_env)) as session:
        assert repo.recent_runs(session=session, model_name="anomdet") == []
