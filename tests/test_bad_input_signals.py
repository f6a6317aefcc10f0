"""A retraining run stopped from outside, as an operator or the machine stops one: Ctrl-C
(SIGINT) during fine-tuning, and SIGKILL during a promotion's backfill.

Each case runs `anomdet retrain` as a real process with the tiny model, without a
configured Prefect API, so that the command starts Prefect's temporary server itself,
then checks what the run's row says, that the temporary server did not outlive the
command, and that what users see did not change.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from cli.app import app
from db.engine import get_engine
from flows.retrain import CANCELLED
from tests.databases import only_on
from tests.flows.test_retrain import seed_records, toy_records

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.long, pytest.mark.skipif(not Path("/proc/self/environ").exists(),
                                reason="finds the temporary server's process through /proc")]


def _servers(prefect_home: Path) -> list[int]:
    """Prefect temporary servers (uvicorn) started with this PREFECT_HOME."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"uvicorn" in cmdline and f"PREFECT_HOME={prefect_home}".encode() in environ:
            found.append(int(entry.name))
    return found


def _servers_gone(prefect_home: Path, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _servers(prefect_home):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def command(anomdet_env: str, tmp_path: Path) -> Iterator[dict[str, object]]:
    """How the test runs `anomdet retrain`: its environment, its own PREFECT_HOME and
    output files. Any temporary server of that home is stopped at the end, whatever
    the test found."""
    home = tmp_path / "prefect"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {"PREFECT_HOME": str(home), "PYTHONPATH": str(ROOT),
            "ANOMDET_PROMOTION__BOOTSTRAP_RESAMPLES": "0", "ANOMDET_TRAINING__EPOCHS": "3",
            "ANOMDET_CHUNK_SIZE": "100", "ANOMDET_SCORING__BACKFILL_CHUNKS": "1"}
    yield {"env": env, "home": home, "stderr": tmp_path / "stderr.txt"}
    for pid in _servers(home):
        os.kill(pid, signal.SIGKILL)


def _interruptible() -> None:
    # A child inherits an ignored SIGINT, and Python then leaves Ctrl-C ignored; an earlier
    # test in this worker may have left it so. The command starts as from a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(command: dict[str, object]) -> subprocess.Popen:
    # Output to files: a server that outlived the command would hold a pipe open.
    with open(command["stderr"], "wb") as stderr:  # type: ignore[arg-type]
        return subprocess.Popen([sys.executable, "-m", "cli", "retrain"], cwd=ROOT,
                                env=command["env"], stdout=subprocess.DEVNULL, stderr=stderr,
                                preexec_fn=_interruptible)


def _scalar(url: str, sql: str) -> object:
    with get_engine(url).connect() as conn:
        return conn.execute(sa.text(sql)).scalar()


def _wait_for(url: str, sql: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before {what}"
        try:
            if _scalar(url, sql):
                return
        except sa.exc.DBAPIError:  # the tables are not there yet
            pass
        time.sleep(0.05)
    pytest.fail(f"the run never reached {what}")


# Ctrl-C is the process's affair: the row it leaves is written as every run's end is, on
# both databases in the flow tests; SQLite here.
@only_on("sqlite")
def test_ctrl_c_during_fine_tuning_records_the_run_as_cancelled(
        anomdet_env: str, command: dict[str, object]) -> None:
    seed_records(anomdet_env, toy_records(1200))
    # A schedule of a minute or more: the tiny model would otherwise finish its three
    # epochs within the moment the test takes to see the run start and signal it.
    command["env"] |= {"ANOMDET_TRAINING__MIN_STEPS": "5000",  # type: ignore[operator]
                       "ANOMDET_TRAINING__MAX_STEPS": "5000"}
    proc = _start(command)
    try:
        # The split is recorded just before the baseline and the fine-tuning start.
        _wait_for(anomdet_env, "SELECT count(*) FROM anomdet_runs WHERE state = 'running' "
                  "AND test_rows IS NOT NULL", proc, "fine-tuning")
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = Path(command["stderr"]).read_text()  # type: ignore[arg-type]
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: interrupted: the run is recorded in anomdet_runs as failed, "
                      f"{CANCELLED}; `anomdet status` shows it"], stderr[-3000:]
    with get_engine(anomdet_env).connect() as conn:
        runs = conn.execute(sa.text("SELECT state, decision, reason, test_rows, "
                                    "challenger_metrics FROM anomdet_runs")).all()
        versions = conn.execute(sa.text("SELECT count(*) FROM anomdet_model_versions")).scalar()
    [(state, decision, reason, test_rows, challenger_metrics)] = runs
    assert (state, decision, reason) == ("failed", "failed", CANCELLED)
    # Stopped between the split and the evaluation: in the fine-tuning.
    assert test_rows and challenger_metrics is None
    assert versions == 0
    assert _servers_gone(command["home"])  # type: ignore[arg-type]


@only_on("sqlite")
def test_sigkill_during_the_backfill_leaves_no_server_and_status_says_so(
        anomdet_env: str, command: dict[str, object]) -> None:
    seed_records(anomdet_env, toy_records(300))
    extra = toy_records(6300, seed=9).iloc[300:]
    seed_records(anomdet_env, extra.assign(label=pd.array([None] * len(extra), dtype="Int64")))
    command["env"]["ANOMDET_PROMOTION__FIRST_RUN"] = "always"  # type: ignore[index]
    proc = _start(command)
    try:
        _wait_for(anomdet_env, "SELECT count(*) FROM anomdet_scores s JOIN "
                  "anomdet_model_versions v ON v.id = s.model_version_id "
                  "WHERE v.status = 'candidate'", proc, "the backfill")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _servers_gone(command["home"]), "the temporary Prefect server outlived the command"
    # Users see what they saw: no champion, nothing flagged.
    assert _scalar(anomdet_env, "SELECT count(*) FROM anomdet_model_versions "
                                "WHERE status = 'champion'") == 0
    assert _scalar(anomdet_env, "SELECT count(*) FROM anomdet_flagged") == 0
    status = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["status"])
    assert status.exit_code == 0, status.output
    [row] = [line for line in status.output.splitlines() if "running" in line]
    assert "running (process gone)" in row, status.output
    assert (f"its process {proc.pid} on {socket.gethostname()} ended without recording an "
            "outcome (killed?); the next retrain closes it as failed") in row, status.output
    assert _scalar(anomdet_env, "SELECT state FROM anomdet_runs") == "running"
