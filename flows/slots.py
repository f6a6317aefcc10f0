"""One retraining run per model at a time, whatever started it.

A deployment's own concurrency limit only spaces the runs of that deployment: the
`prefect.yaml` deployment, the one `anomdet serve` registers and an `anomdet retrain`
on the command line would each train at 02:00. Every retraining run therefore holds
one slot of a global concurrency limit named after its model (`anomdet-retrain-<model>`,
limit 1, created on first use, shown on the UI's Concurrency page) from its start to its
end. A user may raise the limit there; anomdet never lowers it again.

Without a Prefect server (the temporary local API of `anomdet retrain`) each process has
its own API, and a slot taken by a process that is then killed would stay taken on the
next start. There the runs take an exclusive lock on a file beside the model's
artifacts instead: runs that can share a champion share that folder, and the system
frees the lock of a process that dies.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import get_current_settings

logger = logging.getLogger(__name__)


def slot_name(model_name: str) -> str:
    """The global concurrency limit that every retraining run of `model_name` holds."""
    return f"anomdet-retrain-{model_name}"


def _ensure_limit(name: str) -> None:
    """Create the limit with one slot unless it exists (its limit is then the user's)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:  # another run created it first
                pass


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another retraining run of this model is going: waiting for it "
                        "(lock %s)", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def retrain_slot(model_name: str, model_root: Path) -> Iterator[None]:
    """Hold the model's retraining slot: wait while another run of it holds the slot."""
    if get_current_settings().api.url:
        name = slot_name(model_name)
        _ensure_limit(name)
        started = time.monotonic()
        # strict: a limit deleted meanwhile fails the run rather than letting it race.
        with concurrency(name, occupy=1, strict=True):
            waited = time.monotonic() - started
            if waited > 5:
                logger.info("waited %.0f s for the retraining slot %s", waited, name)
            yield
    else:
        with _file_lock(model_root / ".retrain.lock"):
            yield
