"""What a retraining run concluded: the retrain flow returns it, the CLI and tests read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class RetrainOutcome:
    """A completed run's decision, with the test metrics of the models it compared.

    `challenger`, `champion` and `baseline` hold each model's metrics on the same test
    split (`champion` is None on a first run). `checks` are the promotion rule's checks
    as (name, passed, detail). `message` says in one line what happened, as the run's
    state does. `promoted_version` and `flags_written` are set only when the challenger
    became champion.
    """

    run_id: int
    decision: Literal["promoted", "rejected"]
    reason: str
    message: str
    challenger: dict[str, Any]
    champion: dict[str, Any] | None
    baseline: dict[str, Any] | None
    uncertainty: dict[str, Any] | None
    champion_version: int | None
    checks: tuple[tuple[str, bool, str], ...]
    promoted_version: int | None = None
    flags_written: int | None = None

    def __post_init__(self) -> None:
        if self.decision not in ("promoted", "rejected"):
            raise ValueError(f"a run's outcome is promoted or rejected, not {self.decision!r}")
        if self.promoted != (self.promoted_version is not None):
            raise ValueError("a promoted outcome names its version, and only a promoted one")

    @property
    def promoted(self) -> bool:
        """True when the challenger became champion."""
        return self.decision == "promoted"

    def to_dict(self) -> dict[str, Any]:
        """The outcome under the keys a run's result has always had, for JSON."""
        shown: dict[str, Any] = {
            "run_id": self.run_id, "challenger": self.challenger, "champion": self.champion,
            "baseline": self.baseline, "uncertainty": self.uncertainty,
            "champion_version": self.champion_version,
            "checks": [list(check) for check in self.checks],
            "decision": self.decision, "reason": self.reason, "message": self.message,
        }
        if self.promoted:
            shown |= {"promoted_version": self.promoted_version,
                      "flags_written": self.flags_written}
        return shown
