"""The check flow: every few minutes, start the retrain deployment when the labels justify it.

Cheap by design: it counts labels in SQL and compares a sample of unlabelled texts with
the champion's training profile; it loads no model and trains nothing. When at least
ANOMDET_REVIEW__RETRAIN_AFTER_LABELS labels are newer than the champion's training data
(see db.feedback.LabelNews), or the unlabelled records drifted past a bound of
ANOMDET_DRIFT__* (ANOMDET_REVIEW__RETRAIN_ON_DRIFT), it starts a run of the retrain
deployment and returns at once. The retraining runs on its own deployment, so that
deployment's concurrency limit still holds; a check finds a retrain already queued or
running and starts nothing.
"""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, State

from anomdet.settings import Settings
from flows.logs import run_namer, show_domain_logs
from tasks.check import gather_findings, retrain_under_way, start_retrain
from tasks.database import prepare_database
from tasks.events import emit_labels_arrived

#: The retrain deployment of prefect.yaml; `anomdet serve` passes its own.
RETRAIN_DEPLOYMENT = "retrain/retrain-nightly"


@flow(name="check", flow_run_name=run_namer("check"), log_prints=False)
def check(retrain_deployment: str = RETRAIN_DEPLOYMENT) -> State:
    """Start the retrain deployment if enough labels arrived, or the unlabelled records
    drifted, since the champion's training data."""
    show_domain_logs()
    settings = Settings()
    prepare_database(settings)
    findings = gather_findings(settings)
    review = settings.review
    reasons = findings.reasons(review.retrain_after_labels, review.retrain_on_drift)
    if not reasons:
        return Completed(message=f"nothing to do: {findings.summary(review.retrain_after_labels)}")
    busy = retrain_under_way(settings, retrain_deployment)
    if busy:
        return Completed(message=f"a retrain is under way ({busy}); {'; '.join(reasons)}")
    started = start_retrain(retrain_deployment, reasons)
    emit_labels_arrived(settings.model_name, labels=findings.labels, started=started,
                        reasons=reasons)
    return Completed(message=f"started {started}: {'; '.join(reasons)}")
