"""Tasks that publish what a run did as Prefect artifacts (stable keys keep history)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from anomdet.plots import pr_curve_markdown
from anomdet.promotion import Decision, EvalResult
from anomdet.report import decision_markdown, metrics_table
from anomdet.validation import ValidationReport


def _key(settings_model_name: str, what: str) -> str:
    # Artifact keys allow lowercase letters, digits and dashes only.
    name = "".join(c if c.isalnum() else "-" for c in settings_model_name.lower())
    return f"{name}-{what}"


@task(name="publish metrics and decision", cache_policy=NO_CACHE)
def publish_decision(model_name: str, challenger: dict[str, Any], champion: dict[str, Any] | None,
                     decision: Decision, baseline: dict[str, Any] | None = None) -> None:
    """Metrics side by side and the decision with every reason."""
    create_table_artifact(
        table=metrics_table(challenger, champion, baseline), key=_key(model_name, "metrics"),
        description="Challenger, champion and TF-IDF baseline on the same held-out test split",
    )
    create_markdown_artifact(
        markdown=decision_markdown(decision, challenger, champion, baseline),
        key=_key(model_name, "decision"), description="Promotion decision and its reasons",
    )


@task(name="publish precision-recall curve", cache_policy=NO_CACHE)
def publish_pr_curve(model_name: str, challenger: EvalResult, champion: EvalResult | None) -> None:
    """Both models' precision-recall curves on the shared test split, as a picture."""
    markdown = pr_curve_markdown(challenger.labels, challenger.scores,
                                 champion.scores if champion else None)
    create_markdown_artifact(markdown=markdown, key=_key(model_name, "pr-curve"),
                             description="Precision-recall curves of challenger and champion")


@task(name="publish validation report", cache_policy=NO_CACHE)
def publish_validation(model_name: str, report: ValidationReport) -> None:
    """The data gate's outcome: each expectation, observed value and example ids."""
    create_markdown_artifact(markdown=report.to_markdown(), key=_key(model_name, "validation"),
                             description="Great Expectations validation of the labelled records")


@task(name="publish flagged records", cache_policy=NO_CACHE)
def publish_flagged(model_name: str, rows: list[dict[str, Any]]) -> None:
    """The top flagged records of the champion, with their text."""
    table = [
        {"record_id": r["record_id"], "score": round(float(r["score"]), 4),
         "text": str(r.get("text", ""))[:200]}
        for r in rows
    ]
    create_table_artifact(table=table or [{"record_id": "-", "score": "-", "text": "no flags"}],
                          key=_key(model_name, "top-flagged"),
                          description="Highest-scoring records flagged by the champion")
