"""The retraining flow: extract, validate, split, fine-tune, evaluate, decide, promote."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.transactions import transaction
from pydantic import BaseModel, Field

from anomdet.artifact import MANIFEST_FILE, sha256_file
from anomdet.data import fingerprint
from anomdet.drift import DataProfile
from anomdet.errors import DataValidationError, DriftError
from anomdet.settings import Settings
from db.engine import get_engine, session_scope
from db.repository import ChampionChanged, flagged_rows
from tasks.database import extract_labelled, prepare_database, record_run, start_run
from tasks.model import (
    evaluate_model,
    fine_tune_challenger,
    fit_baseline,
    load_champion,
    measure_drift,
    split_data,
    validate_records,
)
from tasks.promotion import commit_promotion, decide_promotion, score_unlabelled, store_artifact
from tasks.report import (
    publish_decision,
    publish_flagged,
    publish_pr_curve,
    publish_validation,
)


class RetrainParams(BaseModel):
    """Per-run overrides of the configured training settings (None keeps the setting)."""

    base_model: str | None = Field(None, description="'bundled', 'tiny-random', a dir or a hub id")
    epochs: int | None = Field(None, ge=1, le=100)
    seed: int | None = None
    max_train_rows: int | None = Field(None, ge=10)
    learning_rate: float | None = Field(None, gt=0, lt=1)


def effective_settings(params: RetrainParams) -> Settings:
    """Configured settings with this run's overrides applied."""
    settings = Settings()
    overrides = params.model_dump(exclude_none=True)
    training = settings.training.model_copy(update=overrides)
    return settings.model_copy(update={"training": type(training).model_validate(training)})


@flow(name="retrain", log_prints=False)
def retrain(params: RetrainParams | None = None) -> dict[str, Any]:
    """Retrain the detector and promote the challenger only if it beats the champion."""
    params = params or RetrainParams()
    settings = effective_settings(params)
    prepare_database(settings)
    run_id = start_run(settings, flow_run.get_id(), params.model_dump())
    try:
        return _retrain(settings, run_id)
    except DataValidationError as exc:
        record_run(settings, run_id, state="failed", decision="failed_validation",
                   reason=str(exc), validation=exc.report.summary())
        raise
    except DriftError as exc:
        record_run(settings, run_id, state="failed", decision="failed_validation",
                   reason=str(exc), drift=exc.report.summary())
        raise
    except Exception as exc:
        record_run(settings, run_id, state="failed", decision="failed",
                   reason=f"{type(exc).__name__}: {exc}")
        raise


def _retrain(settings: Settings, run_id: int) -> dict[str, Any]:
    logger = get_run_logger()
    frame = extract_labelled(settings)
    docs_dir = settings.artifact_root() / "validation" / f"run-{run_id}"
    report = validate_records(frame, settings, docs_dir)
    publish_validation(settings.model_name, report)
    if not report.success:
        raise DataValidationError(report)
    champion = load_champion(settings)
    drift, data_profile = measure_drift(frame, champion[1] if champion else None, settings)
    record_run(settings, run_id, validation=report.summary(), drift=drift.summary(),
               data_fingerprint=fingerprint(frame))
    if drift.blocks:
        raise DriftError(drift)
    split = split_data(frame, settings)
    record_run(settings, run_id, test_rows=len(split.test))
    baseline = fit_baseline(split, settings)
    challenger = fine_tune_challenger(split, settings)
    ch_eval = evaluate_model((challenger.scoring_model, challenger.tokenizer), split.test,
                             challenger.threshold, challenger.config.max_length, settings)
    champ_eval = None
    if champion is not None:
        row, loaded = champion
        champ_eval = evaluate_model((loaded.model, loaded.tokenizer), split.test,
                                    loaded.threshold, loaded.max_length, settings)
    decision = decide_promotion(ch_eval, champ_eval, settings, baseline)
    champ_metrics = champ_eval.metrics if champ_eval else None
    publish_decision(settings.model_name, ch_eval.metrics, champ_metrics, decision,
                     baseline.metrics)
    publish_pr_curve(settings.model_name, ch_eval, champ_eval)
    record_run(settings, run_id, challenger_metrics=ch_eval.metrics, champion_metrics=champ_metrics,
               baseline_metrics=baseline.metrics,
               champion_version_id=champion[0].id if champion else None,
               details={"checks": [c.__dict__ for c in decision.checks],
                        "bootstrap": decision.bootstrap, "uncertainty": decision.uncertainty,
                        "training": challenger.result.history})
    outcome: dict[str, Any] = {
        "run_id": run_id, "challenger": ch_eval.metrics, "champion": champ_metrics,
        "baseline": baseline.metrics, "uncertainty": decision.uncertainty,
        "champion_version": champion[0].version if champion else None,
        "checks": [(c.name, c.passed, c.detail) for c in decision.checks],
    }
    if not decision.promote:
        record_run(settings, run_id, state="completed", decision="rejected", reason=decision.reason)
        logger.info("challenger not promoted: %s", decision.reason)
        return {**outcome, "decision": "rejected", "reason": decision.reason}
    try:
        version_id, number, written = _promote(settings, run_id, challenger, ch_eval.metrics,
                                               champion[0].id if champion else None,
                                               fingerprint(split.train), data_profile)
    except ChampionChanged as exc:
        reason = f"{decision.reason} Promotion abandoned: {exc}."
        record_run(settings, run_id, state="completed", decision="rejected", reason=reason)
        return {**outcome, "decision": "rejected", "reason": reason}
    record_run(settings, run_id, state="completed", decision="promoted", reason=decision.reason,
               challenger_version_id=version_id)
    with session_scope(get_engine(settings.database_url)) as session:
        top = flagged_rows(session=session, limit=settings.top_flagged)
    publish_flagged(settings.model_name, top)
    return {**outcome, "decision": "promoted", "reason": decision.reason,
            "promoted_version": number, "flags_written": written}


def _promote(settings: Settings, run_id: int, challenger: Any, metrics: dict[str, Any],
             expected_champion_id: int | None, data_fingerprint: str,
             data_profile: DataProfile) -> tuple[int, int, int]:
    """Store, insert, move and flag as one unit: on any failure the artifact is removed
    (Prefect transaction rollback) and the database transaction leaves no row."""
    meta = {"threshold": challenger.threshold, "metrics": metrics,
            "data_profile": data_profile.to_dict(),
            "base_model": challenger.base_model, "max_length": challenger.config.max_length,
            "precision": challenger.precision,
            "hyperparameters": challenger.hyperparameters(), "run_id": run_id}
    with transaction():
        directory = store_artifact(challenger, settings, meta)
        scores, summary = score_unlabelled(challenger, settings, run_id)
        version_id, number = commit_promotion(
            settings, expected_champion_id=expected_champion_id,
            version_fields={
                "base_model": challenger.base_model, "artifact_uri": str(directory),
                "weights_sha256": sha256_file(directory / MANIFEST_FILE),
                "data_fingerprint": data_fingerprint,
                "hyperparameters": challenger.hyperparameters(), "metrics": metrics,
                "threshold": challenger.threshold, "flow_run_id": flow_run.get_id(),
                "run_id": run_id,
            },
            scores=scores,
        )
    return version_id, number, summary.flagged
