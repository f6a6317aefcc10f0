"""Progress that people can see: a Prefect progress artifact in the UI and, when the flow
runs in a terminal (the `anomdet` command), a tqdm bar on stderr."""

from __future__ import annotations

import time
from collections.abc import Callable

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from tqdm.auto import tqdm


def ui_progress(description: str, *, step_percent: float = 5.0,
                min_seconds: float = 1.0) -> Callable[[int, int], None]:
    """A `(done, total)` callback updating one progress artifact every `step_percent`, at
    most once every `min_seconds` (each update is a call to the API), and at the end."""
    artifact_id = create_progress_artifact(progress=0.0, description=description)
    last = [0.0, time.monotonic()]
    bar: list[tqdm] = []

    def report(done: int, total: int) -> None:
        if not bar:
            # disable=None: a bar on a terminal, nothing in a worker's captured output.
            bar.append(tqdm(total=total, desc=description, unit="text", disable=None,
                            leave=False))
        bar[0].update(done - bar[0].n)
        percent = 100.0 * done / max(1, total)
        due = (percent - last[0] >= step_percent
               and time.monotonic() - last[1] >= min_seconds)
        if due or done >= total:
            last[:] = [percent, time.monotonic()]
            # Whole percents, rounded down: the UI shows the figure as it is sent, and
            # 100% only once the work is done.
            update_progress_artifact(artifact_id=artifact_id,
                                     progress=float(min(100, int(percent))))
        if done >= total:
            bar[0].close()

    return report
