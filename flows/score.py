"""The scoring flow: score new unlabelled records with the champion, incrementally."""

from __future__ import annotations

from typing import Any

from prefect import flow

from anomdet.settings import Settings
from tasks.database import prepare_database
from tasks.scoring import load_scorer, score_new_records


@flow(name="score", log_prints=False)
def score() -> dict[str, Any]:
    """Score the unlabelled records the champion has not scored yet and write their flags."""
    settings = Settings()
    prepare_database(settings)
    champion = load_scorer(settings)
    if champion is None:
        raise ValueError("there is no champion yet: run `anomdet retrain` first")
    version_id, scorer = champion
    return score_new_records(settings, version_id, scorer)
