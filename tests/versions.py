"""Versions made champion in a test's own session, the way a retraining run makes them.

A run registers its challenger as a candidate, backfills the candidate's scores (and with
them its flags), then flips it to champion by compare-and-set; `promote` does the three in
one transaction, with the repository functions the run calls, so that a test sets up the
same rows a run leaves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from db import repository as repo
from db.models import ModelVersion


def promote(
    session: Session, *, expected_champion_id: int | None,
    flags: Sequence[dict[str, Any]] = (), scores: Sequence[repo.ScoreRow] = (),
    **version_fields: Any,
) -> ModelVersion:
    """Register a version (numbered next), write its scores and any extra `flags`, and
    make it champion in place of `expected_champion_id`.

    Raises `repo.ChampionChanged` as the flip does when the champion is another."""
    version = repo.register_candidate(session=session, **version_fields)
    repo.write_scores(session=session, model_version_id=version.id, rows=scores,
                      threshold=version.threshold, run_id=version.run_id)
    repo.insert_flags(session=session, model_version_id=version.id, rows=flags)
    return repo.flip_champion(session=session, candidate_id=version.id,
                              expected_champion_id=expected_champion_id)
