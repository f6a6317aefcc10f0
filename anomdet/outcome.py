"""What a run concluded: a retraining run's decision, a scoring run's counts. The flows
return them; the CLI and tests read them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

#: How many ids of skipped or unkeyed records a scoring result names: enough to find
#: them, few enough for a run's result and its artifact.
EXAMPLE_IDS = 20


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


@dataclass(frozen=True)
class ScoreCounts:
    """What scoring some records did: how many it scored and flagged, how many it skipped
    for want of text (`skipped`) or of an id of their own (`unkeyed`), with ids of some
    of those. The results of id ranges add up with `+`, or all at once with `total`.
    """

    scored: int = 0
    flagged: int = 0
    skipped: int = 0
    skipped_example_ids: tuple[str, ...] = ()
    unkeyed: int = 0
    unkeyed_example_ids: tuple[str, ...] = ()

    def __add__(self, other: ScoreCounts) -> ScoreCounts:
        if not isinstance(other, ScoreCounts):
            return NotImplemented
        return ScoreCounts(
            scored=self.scored + other.scored, flagged=self.flagged + other.flagged,
            skipped=self.skipped + other.skipped,
            skipped_example_ids=(self.skipped_example_ids
                                 + other.skipped_example_ids)[:EXAMPLE_IDS],
            unkeyed=self.unkeyed + other.unkeyed,
            unkeyed_example_ids=(self.unkeyed_example_ids
                                 + other.unkeyed_example_ids)[:EXAMPLE_IDS])

    @classmethod
    def total(cls, parts: Iterable[ScoreCounts]) -> ScoreCounts:
        """The sum of `parts`; nothing done for none."""
        return sum(parts, cls())

    def to_dict(self) -> dict[str, Any]:
        """The counts under the keys a scoring result has always had, for JSON."""
        return {"scored": self.scored, "flagged": self.flagged, "skipped": self.skipped,
                "skipped_example_ids": list(self.skipped_example_ids),
                "unkeyed": self.unkeyed, "unkeyed_example_ids": list(self.unkeyed_example_ids)}


@dataclass(frozen=True)
class ScoringOutcome:
    """A scoring pass over a version's unscored records: the version, the records the
    pass had to score (`records`, unkeyed ones included), what it did with them, and the
    kept scores of older versions it pruned."""

    model_version_id: int
    records: int
    counts: ScoreCounts
    pruned_scores: int

    def to_dict(self) -> dict[str, Any]:
        """The pass under the keys a scoring run's result has always had, for JSON."""
        return {"model_version_id": self.model_version_id, "records": self.records,
                **self.counts.to_dict(), "pruned_scores": self.pruned_scores}
