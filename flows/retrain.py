"""The retraining flow: extract, validate, split, fine-tune, evaluate, decide, promote."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
from prefect import flow, get_run_logger, tags
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.transactions import transaction
from pydantic import BaseModel

from anomdet.artifact import data_docs_dir
from anomdet.data import Split, fingerprint
from anomdet.drift import DataProfile
from anomdet.errors import DataValidationError, DriftError, is_run_timeout, timed_out
from anomdet.outcome import RetrainOutcome
from anomdet.promotion import Decision, EvalResult, PendingCandidate
from anomdet.report import RunSummary, promoted_message, rejected_message
from anomdet.scoring import Scorer
from anomdet.settings import Settings
from anomdet.validation import ValidationReport
from db.repository import ChampionChanged, RunEnding, RunProgress
from flows.approval import Approval, ask_for_approval
from flows.logs import flow_timeout, run_namer, show_domain_logs
from flows.parameters import (
    BaseModelName,
    Epochs,
    LearningRate,
    MaxTrainRows,
    ModelName,
    Seed,
    settings_for,
)
from flows.score import backfill, with_task_runner
from flows.slots import retrain_slot
from tasks.database import (
    count_new_labels,
    end_run,
    extract_labelled,
    prepare_database,
    read_top_flagged,
    read_version_quality,
    record_progress,
    start_run,
)
from tasks.events import (
    emit_flags_written,
    emit_promoted,
    emit_rejected,
    emit_validation_failed,
    on_run_failed,
)
from tasks.model import (
    Champion,
    discard_challenger,
    evaluate_model,
    fine_tune_challenger,
    fit_baseline,
    load_champion,
    measure_drift,
    split_data,
    validate_records,
)
from tasks.promotion import (
    Flip,
    check_champion,
    decide_promotion,
    discard_candidate,
    find_pending_candidate,
    flip_champion,
    register_candidate,
    store_artifact,
)
from tasks.report import (
    publish_decision,
    publish_drift,
    publish_flagged,
    publish_pr_curve,
    publish_summary,
    publish_validation,
    tag_run,
)

if TYPE_CHECKING:
    from anomdet.training import Challenger


class RetrainParams(BaseModel):
    """A run's overrides of the configured training settings (None keeps the setting)."""

    base_model: BaseModelName = None
    epochs: Epochs = None
    seed: Seed = None
    max_train_rows: MaxTrainRows = None
    learning_rate: LearningRate = None


def effective_settings(params: RetrainParams, model_name: str | None = None) -> Settings:
    """Configured settings (of `model_name` when given) with this run's overrides applied."""
    settings = settings_for(model_name)
    overrides = params.model_dump(exclude_none=True)
    training = settings.training.model_copy(update=overrides)
    return settings.model_copy(update={"training": type(training).model_validate(training)})


# A failed or crashed run emits anomdet.run.failed, which automations can notify on; a
# run that the data stopped emits anomdet.validation.failed instead. The run ends in a
# state whose message says what happened (promoted v4: ..., not promoted: ...); calling
# the flow returns its `RetrainOutcome` all the same. A run that passes
# ANOMDET_RETRAIN_TIMEOUT_MINUTES, waiting for its slot included, ends TimedOut (Failed).
@flow(name="retrain", log_prints=False, on_failure=[on_run_failed],
      on_crashed=[on_run_failed], flow_run_name=run_namer("retrain"),
      timeout_seconds=flow_timeout("retrain"))
def retrain(model_name: ModelName = None, base_model: BaseModelName = None,
            epochs: Epochs = None, seed: Seed = None, max_train_rows: MaxTrainRows = None,
            learning_rate: LearningRate = None) -> State:
    """Retrain the detector and promote the challenger only if it beats the champion.

    A parameter left empty takes the configured setting, the ANOMDET_ variable named.

    Args:
        model_name: Model to retrain; its champion, runs and artifacts go by this name
            (ANOMDET_MODEL_NAME, "anomdet").
        base_model: Weights to fine-tune: "bundled" (all-MiniLM-L6-v2, offline),
            "tiny-random" (for tests), a local directory or a Hugging Face model id
            (ANOMDET_TRAINING__BASE_MODEL).
        epochs: Passes over the distinct training texts, 1 to 100
            (ANOMDET_TRAINING__EPOCHS).
        seed: Seed of initialisation and batching; the split keeps its own
            (ANOMDET_TRAINING__SEED).
        max_train_rows: Cap on the training rows, at least 10; empty trains on all
            (ANOMDET_TRAINING__MAX_TRAIN_ROWS).
        learning_rate: Peak learning rate, between 0 and 1
            (ANOMDET_TRAINING__LEARNING_RATE).
    """
    show_domain_logs()
    params = RetrainParams(base_model=base_model or None, epochs=epochs, seed=seed,
                           max_train_rows=max_train_rows, learning_rate=learning_rate)
    settings = effective_settings(params, model_name)
    with retrain_slot(settings.model_name, settings.artifact_root() / settings.model_name):
        return _run(settings, params)


#: The reason recorded for a run interrupted by SIGINT (Ctrl-C).
CANCELLED = ("cancelled: interrupted (SIGINT) before it finished; a promotion it had begun "
             "is resumed by the next run")


def _run(settings: Settings, params: RetrainParams) -> State:
    """The run, once it holds its model's retraining slot."""
    prepare_database(settings)
    run_id = start_run(settings, flow_run.get_id(), params.model_dump())
    try:
        return _retrain(settings, run_id)
    except (DataValidationError, DriftError) as exc:
        # A gate stopped the run: its report goes where the run keeps the gate's figures.
        gate = "validation" if isinstance(exc, DataValidationError) else "drift"
        record_progress(settings, run_id, RunProgress(**{gate: exc.report.summary()}))
        end_run(settings, run_id, RunEnding(state="failed", decision="failed_validation",
                                            reason=str(exc)))
        emit_validation_failed(settings.model_name, run_id=run_id, reason=str(exc),
                               summary=exc.report.summary())
        return _stopped_by_data(exc)
    except Exception as exc:
        reason = (timed_out(exc, fine_tune_minutes=settings.fine_tune_timeout_minutes,
                            retrain_minutes=settings.retrain_timeout_minutes)
                  if is_run_timeout(exc) else f"{type(exc).__name__}: {exc}")
        end_run(settings, run_id, RunEnding(state="failed", decision="failed", reason=reason))
        raise
    except KeyboardInterrupt:
        # Ctrl-C (SIGINT): the row says so now, rather than `running` until a later run
        # finds its process gone.
        end_run(settings, run_id, RunEnding(state="failed", decision="failed",
                                            reason=CANCELLED))
        raise


def _stopped_by_data(exc: ValueError) -> State:
    """Failed, with the gate's own words as the message and no traceback: the data, not
    the code, stopped the run. Calling the flow raises `exc`."""
    tag_run("failed-validation")
    return Failed(message=str(exc), data=exc)


def _retrain(settings: Settings, run_id: int) -> State:
    """The run once its row exists: read and check the data, then finish a promotion an
    earlier run left, or train a challenger, compare it and act on the decision."""
    frame = _read_labelled(settings, run_id)
    report = _validate(settings, run_id, frame)
    champion = load_champion(settings)
    data_fingerprint, data_profile = _check_drift(settings, run_id, frame, report, champion)
    pending = _resumable(settings, data_fingerprint, champion)
    if pending is not None:
        return _resume(settings, run_id, pending, champion)
    comparison = _compare(settings, run_id, frame, champion)
    return _settle(settings, run_id, comparison, data_profile)


def _read_labelled(settings: Settings, run_id: int) -> pd.DataFrame:
    """The labelled records, with how many labels are new to the champion in the run's row."""
    frame = extract_labelled(settings)
    labels = count_new_labels(settings)
    get_run_logger().info("%d labels in the records table, %d of them newer than the "
                          "champion's training data", labels.labelled, labels.new)
    record_progress(settings, run_id, RunProgress(details={"labels": labels.to_dict()}))
    return frame


def _validate(settings: Settings, run_id: int, frame: pd.DataFrame) -> ValidationReport:
    """The data gate's report, published whatever it found; `DataValidationError` when
    the records fail it."""
    docs_dir = (data_docs_dir(settings.artifact_root(), run_id)
                if settings.validation.data_docs else None)
    validated = validate_records(frame, settings, docs_dir, return_state=True)
    try:
        report = validated.result()
    except DataValidationError as exc:  # the task failed: publish what failed, then stop
        publish_validation(settings.model_name, exc.report)
        raise
    publish_validation(settings.model_name, report)
    if not report.success:
        raise DataValidationError(report)
    return report


def _check_drift(settings: Settings, run_id: int, frame: pd.DataFrame,
                 report: ValidationReport, champion: Champion | None) -> tuple[str, DataProfile]:
    """The records' fingerprint and profile, once their drift against the champion's
    training data is published and recorded; `DriftError` when the drift blocks the run."""
    drift, data_profile = measure_drift(frame, champion.model if champion else None, settings)
    publish_drift(settings.model_name, drift.summary())
    data_fingerprint = fingerprint(frame)
    record_progress(settings, run_id, RunProgress(
        validation=report.summary(), drift=drift.summary(), data_fingerprint=data_fingerprint))
    if drift.blocks:
        raise DriftError(drift)
    return data_fingerprint, data_profile


def _resumable(settings: Settings, data_fingerprint: str,
               champion: Champion | None) -> PendingCandidate | None:
    """The candidate whose promotion an earlier run decided and left unfinished, when this
    run should finish it. One whose run is still going is that run's; one decided on
    other data or against another champion is discarded."""
    pending = find_pending_candidate(settings)
    if pending is None or pending.in_progress(settings.retrain_timeout_minutes):
        return None
    stale = pending.stale_because(data_fingerprint, champion.id if champion else None)
    if stale is None:
        return pending
    discard_candidate(settings, pending.version_id, stale)
    return None


@dataclass(frozen=True)
class Comparison:
    """What a run compared on the test side of its split: the challenger, the champion
    (None on a first run) and the baseline, and the promotion rule's decision."""

    split: Split
    challenger: Challenger
    challenger_eval: EvalResult
    champion: Champion | None
    champion_eval: EvalResult | None  # None also for a champion whose files are gone
    baseline: EvalResult
    decision: Decision

    @property
    def champion_id(self) -> int | None:
        return self.champion.id if self.champion else None

    @property
    def champion_version(self) -> int | None:
        return self.champion.version if self.champion else None

    @property
    def champion_metrics(self) -> dict[str, Any] | None:
        return self.champion_eval.metrics if self.champion_eval else None


def _compare(settings: Settings, run_id: int, frame: pd.DataFrame,
             champion: Champion | None) -> Comparison:
    """Split the records, fit the baseline and fine-tune the challenger on the train
    side, judge them with the champion on the test side, and publish and record it."""
    split = split_data(frame, settings)
    get_run_logger().info("split: %s", ", ".join(
        f"{name} {rows} ({anomalies} anomalous)"
        for name, (rows, anomalies) in _split_counts(split).items()))
    record_progress(settings, run_id, RunProgress(test_rows=len(split.test)))
    baseline = fit_baseline(split, settings)
    challenger = fine_tune_challenger.with_options(
        timeout_seconds=settings.fine_tune_timeout_minutes * 60)(split, settings)
    comparison = _judge(settings, split, challenger, baseline, champion)
    _record_comparison(settings, run_id, comparison)
    return comparison


def _judge(settings: Settings, split: Split, challenger: Challenger, baseline: EvalResult,
           champion: Champion | None) -> Comparison:
    """Evaluate the challenger and the champion on the shared test split and decide."""
    ch_eval = evaluate_model.with_options(task_run_name="evaluate challenger")(
        Scorer(challenger.scoring_model, challenger.tokenizer, challenger.threshold,
               challenger.config.max_length, settings.score_batch_size, challenger.lexical),
        split.test)
    champ_eval = None
    if champion is not None and champion.model is not None:
        loaded = champion.model
        champ_eval = evaluate_model.with_options(
            task_run_name=f"evaluate champion v{champion.version}")(
            Scorer(loaded.model, loaded.tokenizer, loaded.threshold, loaded.max_length,
                   settings.score_batch_size, loaded.lexical), split.test)
    decision = decide_promotion(ch_eval, champ_eval, settings, baseline)
    if champion is not None and champion.model is None:
        decision = _judged_without(champion, decision)
    return Comparison(split, challenger, ch_eval, champion, champ_eval, baseline, decision)


def _record_comparison(settings: Settings, run_id: int, comparison: Comparison) -> None:
    """Publish the metrics, decision and curves, and keep them in the run's row."""
    challenger, decision = comparison.challenger_eval, comparison.decision
    publish_decision(settings.model_name, challenger.metrics, comparison.champion_metrics,
                     decision, comparison.baseline.metrics)
    publish_pr_curve(settings.model_name, challenger, comparison.champion_eval)
    record_progress(settings, run_id, RunProgress(
        challenger_metrics=challenger.metrics, champion_metrics=comparison.champion_metrics,
        baseline_metrics=comparison.baseline.metrics,
        champion_version_id=comparison.champion_id,
        details={"checks": [c.__dict__ for c in decision.checks],
                 "decision_reason": decision.reason,
                 "bootstrap": decision.bootstrap, "uncertainty": decision.uncertainty,
                 "baseline_bootstrap": decision.baseline_bootstrap,
                 "training": comparison.challenger.result.history}))


def _settle(settings: Settings, run_id: int, comparison: Comparison,
            data_profile: DataProfile) -> State:
    """Act on the decision: reject the challenger, or promote it once a person approves
    where promotions wait for one."""
    decision = comparison.decision
    if not decision.promote:
        return _reject(settings, run_id, comparison, reason=decision.reason,
                       message=rejected_message(decision, settings.promotion.primary_metric,
                                                comparison.challenger_eval.metrics,
                                                comparison.champion_metrics))
    reason, approved_by = decision.reason, ""
    if settings.promotion.require_approval:
        approval = _approval(settings, run_id, comparison)
        if not approval.approved:
            return _reject(settings, run_id, comparison,
                           reason=f"{decision.reason} Not promoted: {approval.describe()}.",
                           message=f"not promoted: {approval.describe()}")
        said = approval.describe()
        reason = f"{reason} {said[0].upper()}{said[1:]}."
        approved_by = f", {approval.describe(comment=False)}"
    return _promote_challenger(settings, run_id, comparison, data_profile, reason=reason,
                               approved_by=approved_by)


def _promote_challenger(settings: Settings, run_id: int, comparison: Comparison,
                        data_profile: DataProfile, *, reason: str, approved_by: str) -> State:
    """Promote the challenger, unless the champion moved since it was compared with it."""
    challenger, champion_id = comparison.challenger, comparison.champion_id
    try:
        if settings.promotion.require_approval:  # the answer came after a wait
            check_champion(settings, champion_id)
        flipped, artifact_uri = _promote(
            settings, run_id, challenger, comparison.challenger_eval.metrics, champion_id,
            fingerprint(comparison.split.train), data_profile)
    except ChampionChanged as exc:
        return _reject(settings, run_id, comparison,
                       reason=f"{reason} Promotion abandoned: {exc}.",
                       message=f"rejected: promotion abandoned, {exc}")
    previous, metrics = comparison.champion_version, comparison.challenger_eval.metrics
    _announce_promotion(settings, run_id, flipped, reason=reason, previous_version=previous,
                        metrics=metrics, champion_metrics=comparison.champion_metrics,
                        threshold=challenger.threshold, artifact_uri=artifact_uri)
    message = promoted_message(flipped.version, settings.promotion.primary_metric, metrics,
                               comparison.champion_metrics, previous, flipped.flagged)
    promoted = _outcome(run_id, comparison, reason=reason, message=message + approved_by,
                        flipped=flipped)
    return _conclude(settings, promoted, comparison, artifact_uri)


def _reject(settings: Settings, run_id: int, comparison: Comparison, *, reason: str,
            message: str) -> State:
    """End the run with the challenger not promoted, for `reason`: the run's row, the
    rejected event, and the run's summary and state, whose message is `message`."""
    end_run(settings, run_id, RunEnding(state="completed", decision="rejected", reason=reason))
    emit_rejected(settings.model_name, champion_version=comparison.champion_version,
                  metrics=comparison.challenger_eval.metrics,
                  champion_metrics=comparison.champion_metrics, run_id=run_id, reason=reason)
    rejected = _outcome(run_id, comparison, reason=reason, message=message)
    return _conclude(settings, rejected, comparison)


def _judged_without(lost: Champion, decision: Decision) -> Decision:
    """The decision about a challenger judged as if there were no champion, because the
    champion's files are gone; a promotion retires that champion by compare-and-set."""
    why = (f"Champion v{lost.version} could not be evaluated: its artifact folder "
           f"{lost.row.artifact_uri} is missing, so the challenger was judged as if there "
           "were no champion.")
    return dataclasses.replace(decision, reason=f"{why} {decision.reason}")


def _approval(settings: Settings, run_id: int, comparison: Comparison) -> Approval:
    """Ask a person (flows.approval) and keep the answer in the run's row."""
    approval = ask_for_approval(settings, run_id, comparison.decision,
                                comparison.challenger_eval.metrics,
                                comparison.champion_metrics, comparison.baseline.metrics,
                                comparison.champion_version)
    record_progress(settings, run_id, RunProgress(details={"approval": approval.to_dict()}))
    return approval


def _announce_promotion(settings: Settings, run_id: int, flipped: Flip, *, reason: str,
                        previous_version: int | None, metrics: dict[str, Any],
                        champion_metrics: dict[str, Any] | None, threshold: float,
                        artifact_uri: str) -> None:
    """End the run as promoted, emit its events and publish the new champion's flags."""
    end_run(settings, run_id, RunEnding(state="completed", decision="promoted", reason=reason,
                                        challenger_version_id=flipped.version_id))
    emit_promoted(settings.model_name, flipped.version, previous_version=previous_version,
                  metrics=metrics, champion_metrics=champion_metrics, threshold=threshold,
                  flags_written=flipped.flagged, artifact_uri=artifact_uri, run_id=run_id,
                  reason=reason)
    emit_flags_written(settings.model_name, version=flipped.version,
                       version_id=flipped.version_id, flagged=flipped.flagged,
                       scored=flipped.scored, threshold=threshold, run_id=run_id)
    publish_flagged(settings.model_name, read_top_flagged(settings))


def _resume(settings: Settings, run_id: int, pending: PendingCandidate,
            champion: Champion | None) -> State:
    """Finish the promotion that an earlier run decided and did not complete: backfill
    what its candidate has not scored, then flip. Nothing is trained again: the data and
    the champion are those the earlier run evaluated against."""
    logger = get_run_logger()
    logger.info("resuming the promotion of candidate v%d (run %s), whose backfill did not "
                "finish", pending.version, pending.run_id)
    record_progress(settings, run_id, RunProgress(
        champion_version_id=pending.expected_champion_id,
        challenger_metrics=pending.challenger_metrics,
        champion_metrics=pending.champion_metrics, baseline_metrics=pending.baseline_metrics,
        details={"checks": pending.checks, "resumed_from_run": pending.run_id,
                 "decision_reason": pending.reason}))
    champion_version = champion.version if champion else None
    reason = (f"resumed the promotion of v{pending.version}, decided by run {pending.run_id}: "
              f"{pending.reason or 'its challenger passed the promotion rule'}")
    try:
        flipped = _backfill_and_flip(settings, run_id, pending.version_id,
                                     pending.expected_champion_id)
    except ChampionChanged as exc:
        reason = f"{reason} Promotion abandoned: {exc}."
        end_run(settings, run_id, RunEnding(state="completed", decision="rejected",
                                            reason=reason))
        outcome = _resumed_outcome(run_id, pending, champion_version, reason,
                                   f"rejected: promotion abandoned, {exc}")
    else:
        _announce_promotion(settings, run_id, flipped, reason=reason,
                            previous_version=champion_version,
                            metrics=pending.challenger_metrics,
                            champion_metrics=pending.champion_metrics,
                            threshold=pending.threshold, artifact_uri=pending.artifact_uri)
        outcome = _resumed_outcome(
            run_id, pending, champion_version, reason,
            f"promoted v{flipped.version} (resumed from run {pending.run_id}): "
            f"{flipped.flagged} records flagged", flipped)
    tag_run(outcome.decision)
    logger.info(outcome.message)
    return Completed(message=outcome.message, data=outcome)


def _resumed_outcome(run_id: int, pending: PendingCandidate, champion_version: int | None,
                     reason: str, message: str,
                     flipped: Flip | None = None) -> RetrainOutcome:
    return RetrainOutcome(
        run_id=run_id, decision="promoted" if flipped else "rejected", reason=reason,
        message=message, challenger=pending.challenger_metrics,
        champion=pending.champion_metrics, baseline=pending.baseline_metrics,
        uncertainty=pending.details.get("uncertainty"), champion_version=champion_version,
        checks=tuple((c["name"], c["passed"], c["detail"]) for c in pending.checks),
        promoted_version=flipped.version if flipped else None,
        flags_written=flipped.flagged if flipped else None)


def _outcome(run_id: int, comparison: Comparison, *, reason: str, message: str,
             flipped: Flip | None = None) -> RetrainOutcome:
    """The run's outcome: the models' test metrics and the rule's checks. It is a
    promotion when it names the flip that made the challenger champion."""
    decision = comparison.decision
    return RetrainOutcome(
        run_id=run_id, decision="promoted" if flipped else "rejected", reason=reason,
        message=message, challenger=comparison.challenger_eval.metrics,
        champion=comparison.champion_metrics, baseline=comparison.baseline.metrics,
        uncertainty=decision.uncertainty, champion_version=comparison.champion_version,
        checks=tuple((c.name, c.passed, c.detail) for c in decision.checks),
        promoted_version=flipped.version if flipped else None,
        flags_written=flipped.flagged if flipped else None)


def _split_counts(split: Split) -> dict[str, tuple[int, int]]:
    """Rows and anomalies of each side of the split."""
    return {name: (len(frame), int(frame["label"].sum()))
            for name, frame in (("train", split.train), ("validation", split.val),
                                ("test", split.test))}


def _conclude(settings: Settings, outcome: RetrainOutcome, comparison: Comparison,
              artifact_uri: str | None = None) -> State:
    """Publish the run's summary, tag the run with its decision, and end it with a state
    whose message says what happened; the outcome is the state's result."""
    challenger = comparison.challenger
    publish_summary(RunSummary(
        model_name=settings.model_name, run_id=outcome.run_id,
        settings=_settings_shown(settings, challenger), splits=_split_counts(comparison.split),
        training_seconds=challenger.result.seconds, history=challenger.result.history,
        challenger=outcome.challenger, champion=outcome.champion,
        baseline=outcome.baseline, champion_version=outcome.champion_version,
        decision=comparison.decision, message=outcome.message,
        promoted_version=outcome.promoted_version, flags_written=outcome.flags_written,
        threshold=challenger.threshold, artifact_uri=artifact_uri,
        production=tuple(read_version_quality(settings))))
    tag_run(outcome.decision)
    discard_challenger(challenger)
    get_run_logger().info(outcome.message)
    return Completed(message=outcome.message, data=outcome)


def _settings_shown(settings: Settings, challenger: Challenger) -> dict[str, Any]:
    """The settings that made this challenger, as it was trained and will score."""
    t = settings.training
    return {"base model": challenger.base_model, "epochs": t.epochs,
            "optimizer steps": challenger.result.steps, "learning rate": t.learning_rate,
            "batch size": t.batch_size, "seed": t.seed, "split seed": t.split_seed,
            "max length": challenger.config.max_length, "precision": challenger.precision,
            "threshold": round(float(challenger.threshold), 4),
            "max train rows": t.max_train_rows}


def _promote(settings: Settings, run_id: int, challenger: Challenger, metrics: dict[str, Any],
             expected_champion_id: int | None, data_fingerprint: str,
             data_profile: DataProfile) -> tuple[Flip, str]:
    """Promote in two phases. First the artifact is stored and the version inserted as a
    `candidate`, as one unit: on any failure the artifact is removed (Prefect transaction
    rollback) and no row remains. Then its scores are backfilled and it is flipped to
    champion (`_backfill_and_flip`).

    Returns the flip and the artifact's folder.
    """
    meta = {"threshold": challenger.threshold, "metrics": metrics,
            "data_profile": data_profile.to_dict(),
            "base_model": challenger.base_model, "max_length": challenger.config.max_length,
            "precision": challenger.precision,
            "hyperparameters": challenger.hyperparameters(), "run_id": run_id}
    with transaction():
        stored = store_artifact(challenger, settings, meta)
        version_id, _ = register_candidate(settings, version_fields={
            "base_model": challenger.base_model, "artifact_uri": str(stored.path),
            "weights_sha256": stored.checksum, "data_fingerprint": data_fingerprint,
            "hyperparameters": challenger.hyperparameters(), "metrics": metrics,
            "threshold": challenger.threshold, "flow_run_id": flow_run.get_id(),
            "run_id": run_id,
        })
    return _backfill_and_flip(settings, run_id, version_id, expected_champion_id), str(stored.path)


def _backfill_and_flip(settings: Settings, run_id: int, version_id: int,
                       expected_champion_id: int | None) -> Flip:
    """Score the candidate's records in id-range chunks (a subflow whose tasks run on
    threads or Dask workers; each chunk commits on its own), then flip it to champion in
    one short compare-and-set. A run stopped before the flip leaves the candidate, which
    nobody sees, for the next run to resume; a candidate that lost the compare-and-set
    is discarded, and `ChampionChanged` says why."""
    scoring = settings.scoring
    runner = with_task_runner(backfill, scoring.backfill_task_runner, scoring.dask_workers)
    # A subflow run takes the tags in force where it is created, not its parent's.
    with tags("anomdet", "backfill"):
        runner(version_id=version_id, chunks=scoring.backfill_chunks, run_id=run_id,
               model_name=settings.model_name)
    try:
        return flip_champion(settings, version_id, expected_champion_id)
    except ChampionChanged as exc:
        discard_candidate(settings, version_id, f"promotion abandoned: {exc}")
        raise
