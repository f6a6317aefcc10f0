"""Tasks that train, load and evaluate models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from anomdet.artifact import ArtifactMissing, LoadedModel, load_artifact, recorded_scoring
from anomdet.baseline import evaluate_baseline
from anomdet.data import Split, split_records
from anomdet.drift import DataProfile, DriftReport, compare, profile
from anomdet.errors import DataValidationError
from anomdet.promotion import EvalResult
from anomdet.scoring import Scorer
from anomdet.settings import Settings
from anomdet.validation import ValidationReport, validate_labelled
from db import repository as repo
from db.models import ModelVersion
from tasks.database import run_logger
from tasks.progress import ui_progress

if TYPE_CHECKING:
    from anomdet.training import Challenger

# anomdet.training and anomdet.checkpoint, which load torch and transformers, are
# imported in the tasks that train or score: a run stopped by its data before then
# starts and ends without loading them.


@task(name="validate records", cache_policy=NO_CACHE)
def validate_records(frame: pd.DataFrame, settings: Settings,
                     data_docs_dir: Path | None = None) -> ValidationReport | State:
    """Run the Great Expectations suite over the labelled records; a failed suite fails
    this task, with what failed as its message (calling it raises DataValidationError)."""
    report = validate_labelled(frame, settings.validation.config(), data_docs_dir=data_docs_dir)
    if report.success:
        return report
    # Returned, not raised: the failure is the data's, so the UI shows its message
    # rather than a traceback.
    error = DataValidationError(report)
    return Failed(message=str(error), data=error)


@task(name="measure drift", cache_policy=NO_CACHE)
def measure_drift(frame: pd.DataFrame, champion: LoadedModel | None,
                  settings: Settings) -> tuple[DriftReport, DataProfile]:
    """Drift of this batch against the champion's training data; the batch's own profile."""
    if champion is not None:
        vocab = frozenset(champion.tokenizer.get_vocab())
        reference = champion.meta.get("data_profile")
    else:
        from anomdet.training import base_vocab

        vocab, reference = base_vocab(settings.training.base_model), None
    current = profile(frame, vocab, seed=settings.training.seed)
    ref = DataProfile.from_dict(reference) if reference else None
    return compare(ref, current, settings.drift.bounds()), current


@task(name="split records", cache_policy=NO_CACHE)
def split_data(frame: pd.DataFrame, settings: Settings) -> Split:
    """Split deterministically, duplicates kept on one side, stratified by label."""
    t = settings.training
    return split_records(frame, val_fraction=t.val_fraction, test_fraction=t.test_fraction,
                         seed=t.split_seed)


class Champion(NamedTuple):
    """The champion a run compares its challenger with: its row, and its verified model,
    None when the artifact folder is gone (the run then judges without it)."""

    row: ModelVersion
    model: LoadedModel | None

    @property
    def id(self) -> int:
        """The champion's version id, as runs and compare-and-set name it."""
        return self.row.id

    @property
    def version(self) -> int:
        """The champion's version number, as users see it."""
        return self.row.version


# No retries: a corrupt or missing artifact will not mend itself.
@task(name="load champion", cache_policy=NO_CACHE)
def load_champion(settings: Settings) -> Champion | None:
    """The current champion's row and its verified artifact, or None on the first run.

    A champion whose artifact folder is gone comes without a model (None): the run
    judges its challenger as if there were no champion, and a promotion retires it.
    An altered artifact still fails the task."""
    with settings.session() as session:
        champion = repo.get_champion(session=session, model_name=settings.model_name)
    if champion is None:
        return None
    try:
        loaded = load_artifact(Path(champion.artifact_uri),
                               expected_sha256=champion.weights_sha256,
                               recorded=recorded_scoring(champion.threshold,
                                                         champion.hyperparameters))
    except ArtifactMissing as exc:
        run_logger().warning("champion v%d cannot be evaluated: %s", champion.version, exc)
        return Champion(champion, None)
    return Champion(champion, loaded)


# The flow sets the timeout (ANOMDET_FINE_TUNE_TIMEOUT_MINUTES). No retries: a retry of
# the whole run reuses the kept challenger instead (see anomdet.checkpoint).
@task(name="fine-tune challenger", cache_policy=NO_CACHE)
def fine_tune_challenger(split: Split, settings: Settings) -> Challenger:
    """Fine-tune the base model on the train split and pick its threshold on validation,
    or take the challenger that an earlier run trained on the same rows and settings."""
    from anomdet.checkpoint import train_or_reuse

    return train_or_reuse(split, settings.training, settings.artifact_root() / settings.model_name,
                          make_progress=lambda: ui_progress("fine-tuning the challenger"))


@task(name="discard kept challenger", cache_policy=NO_CACHE)
def discard_challenger(challenger: Challenger) -> None:
    """The run has decided: its challenger need not wait for a retry any more."""
    from anomdet.checkpoint import discard_checkpoint

    discard_checkpoint(challenger.checkpoint)


@task(name="fit TF-IDF baseline", cache_policy=NO_CACHE)
def fit_baseline(split: Split, settings: Settings) -> EvalResult:
    """TF-IDF + logistic regression on the same train split, judged on the same test split."""
    return evaluate_baseline(split, seed=settings.training.seed,
                             target_precision=settings.training.target_precision)


@task(name="evaluate on test split", cache_policy=NO_CACHE)
def evaluate_model(scorer: Scorer, test: pd.DataFrame) -> EvalResult:
    """Score the shared test split with one model as it scores, at its own threshold."""
    from anomdet.training import evaluate

    return evaluate(scorer.model, scorer.tokenizer, test, scorer.threshold,
                    max_length=scorer.max_length, batch_size=scorer.batch_size,
                    lexical=scorer.lexical)
