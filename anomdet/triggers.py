"""When reviewers' labels, or drift, justify a retrain outside the nightly schedule.

The check flow (flows/check.py) gathers `CheckFindings` every few minutes; `reasons`
decides. It is cheap on purpose: counts in SQL, no model loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from db.feedback import LabelNews


@dataclass(frozen=True)
class CheckFindings:
    """What the check found.

    `new_labels`: labels the champion never trained on (`db.feedback.LabelNews.new`).
    `seen_by_last_run`: how many of those the latest retraining run under the same
    champion had already seen when it read its data (0 when there was none): a run that
    saw them and was rejected must not be started again until as many new labels again
    have arrived. `runs_since_champion`: retraining runs started since the champion was
    made; drift starts a retrain only while there is none, so one that was rejected is
    not retried every few minutes (the nightly run still retrains). `drift_breaches`:
    the bounds the unlabelled records crossed against the champion's training data.
    """

    new_labels: int
    seen_by_last_run: int
    runs_since_champion: int
    drift_breaches: tuple[str, ...] = ()
    labels: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, news: LabelNews, runs: list[dict[str, Any]],
           drift_breaches: tuple[str, ...] = ()) -> CheckFindings:
        """Findings from the label counts and the `details` of the model's retraining
        runs, newest first (each keeps the `labels` it saw under its champion)."""
        under_this = [d for d in runs if (d.get("labels") or {}).get("champion_version_id")
                      == news.champion_version_id]
        seen = int(under_this[0]["labels"]["new"]) if under_this else 0
        return cls(new_labels=news.new, seen_by_last_run=min(seen, news.new),
                   runs_since_champion=len(under_this), drift_breaches=drift_breaches,
                   labels=news.to_dict())

    def reasons(self, every: int, on_drift: bool) -> list[str]:
        """Why to retrain now, in words; empty when there is no reason."""
        reasons = []
        arrived = self.new_labels - self.seen_by_last_run
        if arrived >= every:
            since = ("the champion's training data" if not self.seen_by_last_run
                     else "the last retraining run")
            reasons.append(f"{arrived} labels newer than {since} (at least {every} start a "
                           "retrain)")
        if on_drift and self.drift_breaches and self.runs_since_champion == 0:
            reasons.append("unlabelled records drifted from the champion's training data: "
                           + "; ".join(self.drift_breaches))
        return reasons

    def summary(self, every: int) -> str:
        """The findings in one line, for a check that starts nothing."""
        arrived = self.new_labels - self.seen_by_last_run
        drift = ("drift within bounds" if not self.drift_breaches
                 else f"drift past {len(self.drift_breaches)} bound(s), already retrained on")
        return f"{max(arrived, 0)} new labels of the {every} that start a retrain; {drift}"
