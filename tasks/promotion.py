"""Tasks that decide on and carry out a promotion, in two phases: a `candidate` version
(its artifact stored and its row inserted as one unit), then, once its scores are
backfilled, the flip that makes it champion."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, get_transaction

from anomdet.artifact import DiskFull, data_docs_dir, is_disk_full, save_artifact
from anomdet.promotion import Decision, EvalResult, PendingCandidate, decide
from anomdet.settings import Settings
from db import repository as repo
from db import service
from db.service import Flip
from tasks.database import IO_RETRIES, run_logger

if TYPE_CHECKING:
    from anomdet.training import Challenger

ARTIFACT_KEY = "artifact_dir"


@dataclass(frozen=True)
class StoredArtifact:
    """A saved model: its folder and the digest the database keeps to verify it."""

    path: Path
    checksum: str  # SHA-256 of the artifact's manifest, which holds every file's SHA-256


@task(name="check the champion", cache_policy=NO_CACHE, **IO_RETRIES)
def check_champion(settings: Settings, expected_champion_id: int | None) -> None:
    """Raise `repo.ChampionChanged` unless the champion is still the one (or, for None,
    still no one) that the challenger was compared with."""
    with settings.session() as session:
        champion = repo.get_champion(session=session, model_name=settings.model_name)
    found = champion.id if champion else None
    if found != expected_champion_id:
        now = f"v{champion.version}" if champion else "no champion"
        raise repo.ChampionChanged(
            f"the champion of {settings.model_name!r} changed while the challenger waited "
            f"for approval (now {now}); it was compared with another")


@task(name="decide promotion", cache_policy=NO_CACHE)
def decide_promotion(challenger: EvalResult, champion: EvalResult | None,
                     settings: Settings, baseline: EvalResult | None = None) -> Decision:
    """Apply the promotion rule to the models' results on the shared test split, and log
    the decision in words."""
    decision = decide(challenger, champion, settings.promotion.policy(), baseline)
    run_logger().info("%s: %s", "the challenger passes the promotion rule" if decision.promote
                      else "the challenger does not pass the promotion rule", decision.reason)
    return decision


def _not_disk_full(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry a failed save unless the disk is full: that waits for a person."""
    return not isinstance(state.data, DiskFull)


# A failed try leaves nothing (the save renames a finished folder into place), so a
# retry writes a new folder; the rollback hook removes whichever folder was saved.
@task(name="store artifact", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=_not_disk_full)
def store_artifact(challenger: Challenger, settings: Settings,
                   meta: dict[str, Any]) -> StoredArtifact:
    """Save the challenger's weights, tokenizer and metadata under the artifacts folder."""
    directory = settings.artifact_root() / settings.model_name / uuid.uuid4().hex
    txn = get_transaction()
    if txn is not None:
        # Known before the save: whatever fails after it, the rollback removes the folder.
        txn.set(ARTIFACT_KEY, str(directory))
    try:
        checksum = save_artifact(challenger.model, challenger.tokenizer, directory, meta,
                                 lexical=challenger.lexical)
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise _disk_full(challenger, settings, directory, meta.get("run_id")) from exc
    return StoredArtifact(path=directory, checksum=checksum)


def _disk_full(challenger: Challenger, settings: Settings, directory: Path,
               run_id: int | None) -> DiskFull:
    """The full disk, after removing what this run wrote there (the save removed its own
    half-written folder): the kept challenger and the run's Data Docs. Kept, they would
    hold the disk full, and a run that failed is not retried from them."""
    removed = [p for p in (challenger.checkpoint, run_id is not None and data_docs_dir(
        settings.artifact_root(), run_id)) if p and Path(p).exists()]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    weights = sum(t.numel() * t.element_size() for t in challenger.model.state_dict().values())
    done = (f" (removed what this run wrote: {', '.join(str(p) for p in removed)})"
            if removed else "")
    # The tokenizer and metadata add about a megabyte to the weights.
    return DiskFull(directory.parent, weights + 2**20, "the model artifact", done)


@store_artifact.on_rollback
def _remove_artifact(transaction: Transaction) -> None:
    """Something after the save failed: the artifact must leave no trace."""
    directory = transaction.get(ARTIFACT_KEY, None)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


# Retried when the connection fails. A try whose insert went through but whose answer was
# lost is found by its run id, so a retry never registers the run's version twice.
@task(name="register candidate", cache_policy=NO_CACHE, **IO_RETRIES)
def register_candidate(settings: Settings, version_fields: dict[str, Any]) -> tuple[int, int]:
    """Phase one of a promotion: insert the challenger as a `candidate` version, which
    nothing users read shows. Returns (version id, version number)."""
    version = repo.register_run_candidate(settings.session, model_name=settings.model_name,
                                          **version_fields)
    return version.id, version.version


# Retried when the connection fails; a try that went through is recognised (the
# candidate is champion already) rather than failing its own compare-and-set.
@task(name="flip champion", cache_policy=NO_CACHE, **IO_RETRIES)
def flip_champion(settings: Settings, candidate_id: int,
                  expected_champion_id: int | None) -> Flip:
    """Phase two of a promotion: one short transaction makes the backfilled candidate
    champion, by compare-and-set on the champion the run evaluated against. Then, apart,
    prune the kept scores of versions past the retention.

    Raises `ChampionChanged` if another run or a rollback moved the champion meanwhile.
    """
    flipped = service.flip_and_prune(settings.engine(), settings.model_name, candidate_id,
                                     expected_champion_id, settings.scoring.keep_versions)
    if flipped.prune_error is not None:
        run_logger().warning("old versions' scores were not pruned: %s", flipped.prune_error)
    return flipped


@task(name="discard candidate", cache_policy=NO_CACHE, **IO_RETRIES)
def discard_candidate(settings: Settings, candidate_id: int, reason: str) -> bool:
    """Remove a candidate that will not be promoted: its scores, flags and artifact go,
    its row stays as `rejected`. Nothing happens to a version that is no longer a
    candidate (another run made it champion). Returns whether it was discarded."""
    with settings.session() as session:
        discarded = repo.discard_candidate(session=session, candidate_id=candidate_id)
        if discarded is None:
            return False
        version, artifact = discarded.version, Path(discarded.artifact_uri)
    # After the database forgot it: a folder left by a failed removal harms nobody.
    shutil.rmtree(artifact, ignore_errors=True)
    run_logger().info("discarded candidate v%s: %s", version, reason)
    return True


@task(name="find pending candidate", cache_policy=NO_CACHE, **IO_RETRIES)
def find_pending_candidate(settings: Settings) -> PendingCandidate | None:
    """The model's candidate whose promotion did not finish, if there is one."""
    with settings.session() as session:
        found = repo.pending_promotion(session=session, model_name=settings.model_name)
    return None if found is None else PendingCandidate.of(found)
