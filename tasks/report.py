"""Tasks that publish what a run did as Prefect artifacts (stable keys keep history)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

from anomdet.plots import pr_curve_markdown
from anomdet.promotion import Decision, EvalResult
from anomdet.report import (
    RunSummary,
    decision_markdown,
    drift_markdown,
    flagged_sql,
    metrics_table,
    scoring_markdown,
    summary_markdown,
)
from anomdet.settings import Settings
from anomdet.validation import ValidationReport
from db import repository as repo

logger = logging.getLogger(__name__)


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
        description=f"{_verdict(decision)}: challenger, champion and TF-IDF baseline on the "
                    "same held-out test split",
    )
    create_markdown_artifact(
        markdown=decision_markdown(decision, challenger, champion, baseline),
        key=_key(model_name, "decision"), description=f"{_verdict(decision)}: the promotion "
                                                      "decision and its reasons",
    )


def _verdict(decision: Decision) -> str:
    return "**promoted**" if decision.promote else "**not promoted**"


@task(name="publish precision-recall curve", cache_policy=NO_CACHE)
def publish_pr_curve(model_name: str, challenger: EvalResult, champion: EvalResult | None) -> None:
    """Both models' precision-recall curves on the shared test split, as a picture."""
    markdown = pr_curve_markdown(challenger.labels, challenger.scores,
                                 champion.scores if champion else None)
    verdict = (f"challenger PR-AUC {challenger.metrics.get('pr_auc', float('nan')):.4f}"
               + (f", champion {champion.metrics.get('pr_auc', float('nan')):.4f}"
                  if champion else ", no champion yet"))
    create_markdown_artifact(markdown=markdown, key=_key(model_name, "pr-curve"),
                             description=f"Precision-recall curves: {verdict}")


@task(name="publish validation report", cache_policy=NO_CACHE)
def publish_validation(model_name: str, report: ValidationReport) -> None:
    """The data gate's outcome: each expectation, observed value and example ids."""
    verdict = "**passed**" if report.success else "**FAILED**"
    create_markdown_artifact(markdown=report.to_markdown(), key=_key(model_name, "validation"),
                             description=f"{verdict}: Great Expectations validation of the "
                                         "labelled records")


@task(name="publish flagged records", cache_policy=NO_CACHE)
def publish_flagged(model_name: str, rows: list[dict[str, Any]]) -> None:
    """The top flagged records of the champion, with their text, version and threshold."""
    table = [_flag_row(r) for r in rows]
    version = rows[0].get("model_version") if rows else None
    threshold = rows[0].get("threshold") if rows else None
    head = (f"Top {len(rows)} records flagged by v{version} (threshold {float(threshold):.4f})"
            if rows else "No records flagged")
    create_table_artifact(
        table=table or [{"record_id": "-", "score": "-", "text": "no flags"}],
        key=_key(model_name, "top-flagged"),
        description=f"{head}. The full list: `{flagged_sql(model_name)}`")


def _flag_row(row: dict[str, Any]) -> dict[str, Any]:
    # The table shows text as text; newlines and runs of spaces are folded so that a
    # record reads on one line, and long texts are cut.
    return {"record_id": str(row["record_id"]), "score": round(float(row["score"]), 4),
            "threshold": round(float(row["threshold"]), 4),
            "version": row.get("model_version"),
            "text": " ".join(str(row.get("text") or "").split())[:200]}


@task(name="publish run summary", cache_policy=NO_CACHE)
def publish_summary(summary: RunSummary) -> None:
    """The run on one page: settings, data, training, comparison and what changed."""
    create_markdown_artifact(markdown=summary_markdown(summary),
                             key=_key(summary.model_name, "summary"),
                             description=f"Run {summary.run_id}: {summary.message}")


@task(name="publish drift report", cache_policy=NO_CACHE)
def publish_drift(model_name: str, drift: dict[str, Any]) -> None:
    """This batch's figures against the champion's training data."""
    breaches = drift.get("breaches") or []
    verdict = ("**within bounds**" if not breaches
               else f"**{len(breaches)} bound(s) exceeded** ({drift.get('on_breach', '-')})")
    create_markdown_artifact(markdown=drift_markdown(model_name, drift),
                             key=_key(model_name, "drift"),
                             description=f"Drift against the champion's training data: {verdict}")


@task(name="publish scoring summary", cache_policy=NO_CACHE)
def publish_scoring(model_name: str, version: int | None, threshold: float | None,
                    summary: dict[str, Any], new_flags: list[dict[str, Any]]) -> None:
    """What a scoring run scored and flagged, and the records it flagged."""
    head = (f"v{version}: {summary.get('scored', 0)} scored, {summary.get('flagged', 0)} "
            "newly flagged")
    create_markdown_artifact(markdown=scoring_markdown(model_name, version, threshold, summary),
                             key=_key(model_name, "scoring"), description=head)
    create_table_artifact(
        table=[_flag_row(r) for r in new_flags] or [{"record_id": "-", "text": "no new flags"}],
        key=_key(model_name, "new-flags"),
        description=f"Records newly flagged by v{version} in this run (highest score first). "
                    f"The full list: `{flagged_sql(model_name)}`")


@task(name="read new flags", cache_policy=NO_CACHE)
def new_flags(settings: Settings, version_id: int,
              since: datetime) -> tuple[int | None, list[dict[str, Any]]]:
    """The champion's version number and its records flagged since `since`, highest
    score first, as `anomdet_flagged` shows them (at most `top_flagged`)."""
    with settings.session() as session:
        return repo.flags_since(session=session, version_id=version_id, since=since,
                                limit=settings.top_flagged)


def tag_run(*tags: str, remove: tuple[str, ...] = ()) -> None:
    """Add tags to the running flow run, e.g. its decision, so that the run list shows
    it, and take off those in `remove`. A run outside Prefect's API, or an API that
    refuses, keeps its tags."""
    run_id = flow_run.get_id()
    if run_id is None:
        return
    try:
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(UUID(run_id)).tags
            client.update_flow_run(UUID(run_id), tags=sorted({*current, *tags} - set(remove)))
    except Exception as exc:  # noqa: BLE001 - a missing tag is not worth a failed run
        logger.warning("could not tag the flow run %s with %s: %s", run_id, tags, exc)
