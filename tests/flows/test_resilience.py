"""Resilience of the retraining flow: one run per model at a time, a retried run that
reuses the challenger its killed predecessor trained, and timeouts that end a hung run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from anomdet.checkpoint import CHECKPOINTS
from db import repository as repo
from db.engine import get_engine, session_scope
from flows.slots import _file_lock
from tests.databases import only_on
from tests.flows.conftest import free_retrain_slot, retrain_at_once
from tests.flows.test_promotion_faults import _cli_env
from tests.flows.test_retrain import seed_records, toy_records

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parents[2]


def _runs(url: str) -> list:
    with session_scope(get_engine(url)) as session:
        return sorted(repo.recent_runs(session=session, model_name="anomdet"),
                      key=lambda r: r.id)


@only_on("postgresql")
def test_two_runs_started_at_once_take_turns(anomdet_env: str) -> None:

    seed_records(anomdet_env, toy_records(200))
    outcomes = retrain_at_once(1, 2, timeout=900)
    assert len(outcomes) == 2
    first, second = _runs(anomdet_env)
    assert first.state == second.state == "completed"
    # The second run started only when the first had ended, so it saw the first's
    # champion: nothing was abandoned in a race.
    assert first.ended_at <= second.started_at
    assert all("abandoned" not in (o.reason or "") for o in outcomes)


_KILLED_AFTER_TRAINING = textwrap.dedent("""
    import os, signal
    import anomdet.training
    def killed(*args, **kwargs):  # the first evaluation, right after fine-tuning
        os.kill(os.getpid(), signal.SIGKILL)
    anomdet.training.evaluate = killed
    from flows.retrain import retrain
    retrain()
""")


@pytest.mark.long
@only_on("sqlite")
def test_a_run_killed_after_training_is_retried_without_fine_tuning_again(
        anomdet_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.retrain import retrain

    seed_records(anomdet_env, toy_records(300))
    killed = subprocess.run([sys.executable, "-c", _KILLED_AFTER_TRAINING], cwd=ROOT,
                            env=_cli_env(anomdet_env), capture_output=True, timeout=600,
                            check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    free_retrain_slot()
    kept = tmp_path / "artifacts" / "anomdet" / CHECKPOINTS
    [checkpoint] = list(kept.iterdir())

    def no_training(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the retried run fine-tuned again")

    monkeypatch.setattr("anomdet.checkpoint.train_challenger", no_training)
    outcome = retrain()
    assert outcome.decision == "promoted", outcome.reason
    dead, retried = _runs(anomdet_env)
    assert dead.state == "failed" and retried.state == "completed"
    with session_scope(get_engine(anomdet_env)) as session:
        champion = repo.get_champion(session=session, model_name="anomdet")
    # The champion is the challenger the killed run trained, and its run has decided.
    assert champion.hyperparameters["steps"] == retried.details["training"][-1]["step"]
    assert not checkpoint.exists()


@only_on("sqlite")
def test_fine_tuning_past_its_timeout_fails_the_run(anomdet_env: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.retrain import retrain

    seed_records(anomdet_env, toy_records(300))
    monkeypatch.setenv("ANOMDET_TRAINING__MIN_STEPS", "100000")
    monkeypatch.setenv("ANOMDET_TRAINING__MAX_STEPS", "100000")
    monkeypatch.setenv("ANOMDET_FINE_TUNE_TIMEOUT_MINUTES", "0.05")  # 3 seconds
    with pytest.raises(TimeoutError, match="timed out after 3"):
        retrain()
    [run] = _runs(anomdet_env)
    assert run.state == "failed" and "timed out" in run.reason, run.reason
    assert "ANOMDET_FINE_TUNE_TIMEOUT_MINUTES" in run.reason


def test_without_a_server_runs_take_turns_on_a_lock_file(tmp_path: Path) -> None:
    lock = tmp_path / "anomdet" / ".retrain.lock"
    probe = ("import fcntl, sys\n"
             "with open(sys.argv[1], 'a') as f:\n"
             "    try:\n"
             "        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "    except BlockingIOError:\n"
             "        sys.exit(3)\n")
    with _file_lock(lock):
        held = subprocess.run([sys.executable, "-c", probe, str(lock)], check=False)
    free = subprocess.run([sys.executable, "-c", probe, str(lock)], check=False)
    assert (held.returncode, free.returncode) == (3, 0)
