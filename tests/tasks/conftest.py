"""Fakes for the tasks' wiring tests: each task is called as a plain function (`.fn`),
its anomdet or db call replaced by a recorder."""

from __future__ import annotations

from typing import Any

import pytest


class Recorder:
    """A stand-in for one domain function: keeps its calls, returns `result`."""

    def __init__(self, result: Any = None) -> None:
        self.result = result
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        return self.result

    @property
    def call(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The one call made (fails when there were none or several)."""
        assert len(self.calls) == 1, self.calls
        return self.calls[0]


@pytest.fixture
def no_progress(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """`ui_progress` without the Prefect API: returns a callback that does nothing."""
    made = Recorder(lambda done, total: None)
    for module in ("tasks.model", "tasks.scoring"):
        monkeypatch.setattr(f"{module}.ui_progress", made)
    return made
