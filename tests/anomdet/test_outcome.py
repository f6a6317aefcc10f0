"""A run's outcome: typed for the CLI and the tests, under the same keys as JSON."""

from __future__ import annotations

import dataclasses
import json

import pytest

from anomdet.outcome import RetrainOutcome

REJECTED = RetrainOutcome(
    run_id=7, decision="rejected", reason="no gain", message="rejected: no gain",
    challenger={"f1": 0.8},
    champion={"f1": 0.81}, baseline={"f1": 0.7}, uncertainty=None, champion_version=2,
    checks=(("improvement", False, "f1 0.8000 vs 0.8100"),))


def test_the_json_form_keeps_the_keys_a_runs_result_has_always_had() -> None:
    assert set(REJECTED.to_dict()) == {"run_id", "challenger", "champion", "baseline",
                                       "uncertainty", "champion_version", "checks",
                                       "decision", "reason", "message"}
    promoted = dataclasses.replace(REJECTED, decision="promoted", promoted_version=3,
                                   flags_written=12)
    shown = json.loads(json.dumps(promoted.to_dict()))
    assert (shown["promoted_version"], shown["flags_written"]) == (3, 12)
    assert shown["checks"] == [["improvement", False, "f1 0.8000 vs 0.8100"]]
    assert promoted.promoted and not REJECTED.promoted


@pytest.mark.parametrize("changes", [{"decision": "promoted"}, {"promoted_version": 3},
                                     {"decision": "failed"}])
def test_an_outcome_that_contradicts_itself_is_refused(changes: dict) -> None:
    with pytest.raises(ValueError, match="promoted"):
        dataclasses.replace(REJECTED, **changes)

