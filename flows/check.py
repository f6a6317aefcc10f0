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

from flows.logs import flow_timeout, new_run_name, run_namer, show_domain_logs
from flows.parameters import ModelName, settings_for
from flows.schedules import RETRAIN_ENTRYPOINT, declared
from tasks.check import gather_findings, retrain_under_way, start_retrain
from tasks.database import prepare_database
from tasks.events import emit_labels_arrived

#: The retrain deployment of prefect.yaml, as flow/deployment; `anomdet serve` passes its own.
RETRAIN_DEPLOYMENT = f"retrain/{declared(RETRAIN_ENTRYPOINT).name}"


# Bounded by ANOMDET_CHECK_TIMEOUT_MINUTES: overlapping checks are cancelled, so one that
# hung would have every later one cancelled.
@flow(name="check", flow_run_name=run_namer("check"), log_prints=False,
      timeout_seconds=flow_timeout("check"))
def check(retrain_deployment: str = RETRAIN_DEPLOYMENT, model_name: ModelName = None) -> State:
    """Start the retrain deployment if enough labels arrived, or the unlabelled records
    drifted, since the champion's training data.

    Args:
        retrain_deployment: The deployment to start, as flow/deployment.
        model_name: Model whose labels are counted, and which the started run retrains;
            empty: ANOMDET_MODEL_NAME ("anomdet").
    """
    show_domain_logs()
    settings = settings_for(model_name)
    prepare_database(settings)
    findings = gather_findings(settings)
    review = settings.review
    reasons = findings.reasons(review.retrain_after_labels, review.retrain_on_drift)
    if not reasons:
        return Completed(message=f"nothing to do: {findings.summary(review.retrain_after_labels)}")
    busy = retrain_under_way(settings, retrain_deployment)
    if busy:
        return Completed(message=f"a retrain is under way ({busy}); {'; '.join(reasons)}")
    started = start_retrain(retrain_deployment, reasons, settings.model_name,
                            new_run_name("retrain", settings.model_name))
    emit_labels_arrived(settings.model_name, labels=findings.labels, started=started.name,
                        started_id=str(started.id), reasons=reasons)
    return Completed(message=f"started {started.name}: {'; '.join(reasons)}")
