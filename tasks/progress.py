"""A progress callback that shows in the Prefect UI as a progress artifact."""

from __future__ import annotations

from collections.abc import Callable

from prefect.artifacts import create_progress_artifact, update_progress_artifact


def ui_progress(description: str, *, step_percent: float = 5.0) -> Callable[[int, int], None]:
    """A `(done, total)` callback that updates one progress artifact every `step_percent`."""
    artifact_id = create_progress_artifact(progress=0.0, description=description)
    last = [0.0]

    def report(done: int, total: int) -> None:
        percent = 100.0 * done / max(1, total)
        if percent - last[0] >= step_percent or done >= total:
            last[0] = percent
            update_progress_artifact(artifact_id=artifact_id, progress=min(100.0, percent))

    return report
