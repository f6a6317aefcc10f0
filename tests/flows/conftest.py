"""The retraining slot (flows.slots) as the flow tests need it: each test starts with the
default limit, and a test may widen it or free a slot that a killed run held."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from flows.slots import slot_name


def _client():  # noqa: ANN202 - Prefect's sync client
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _api_configured() -> bool:
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def free_retrain_slot(model_name: str = "anomdet") -> None:
    """Drop the model's limit, and so the slot a killed run still holds. A real server's
    repossessor frees a dead holder's slot when its lease expires (5 minutes); the test
    harness's server runs no such service. The next run creates the limit again."""
    from prefect.exceptions import ObjectNotFound

    with _client() as client:
        try:
            client.delete_global_concurrency_limit_by_name(slot_name(model_name))
        except ObjectNotFound:
            pass


def retrain_slots(limit: int, model_name: str = "anomdet") -> None:
    """Let `limit` retraining runs of the model go at once, as a user may."""
    with _client() as client:
        client.upsert_global_concurrency_limit_by_name(slot_name(model_name), limit)


@pytest.fixture(autouse=True)
def _default_retrain_slot() -> Iterator[None]:
    yield
    if _api_configured():
        free_retrain_slot()


def retrain_at_once(*seeds: int, timeout: float = 1200,
                    barrier: threading.Barrier | None = None) -> list[Any]:
    """Start one retraining run per training seed together, in threads; their outcomes
    in the order they ended. A run that raises fails the test with its error, and
    breaks `barrier` (one the runs meet at) so that the others stop waiting for it."""
    from flows.retrain import retrain

    outcomes: list[Any] = []
    errors: list[BaseException] = []

    def run(seed: int) -> None:
        try:
            outcomes.append(retrain(seed=seed))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            if barrier is not None:
                barrier.abort()

    threads = [threading.Thread(target=run, args=(s,)) for s in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert errors == [], f"runs raised: {errors!r}"
    return outcomes
