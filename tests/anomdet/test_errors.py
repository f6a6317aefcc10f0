"""anomdet.errors: a run past its time limit says which setting to change."""

from __future__ import annotations


def test_a_run_past_its_time_limit_is_told_which_setting_to_raise() -> None:
    from anomdet.errors import is_run_timeout, timed_out

    class TaskRunTimeoutError(TimeoutError):
        pass

    late = TaskRunTimeoutError("Scope timed out after 3.0 second(s).")
    assert is_run_timeout(late) and not is_run_timeout(TimeoutError("socket read"))
    line = timed_out(late, fine_tune_minutes=0.05, retrain_minutes=240)
    assert line.startswith("TaskRunTimeoutError: Scope timed out after 3.0 second(s).")
    assert "fine-tuning 0.05 min, the run 240 min" in line
    assert "ANOMDET_FINE_TUNE_TIMEOUT_MINUTES" in line and "\n" not in line
