"""Promotion that waits for a person: ANOMDET_PROMOTION__REQUIRE_APPROVAL=true.

A challenger that passed the promotion rule is not promoted at once. The run pauses
(`pause_flow_run`) with an input form in the Prefect UI: the form shows the decision,
its checks and the models' metrics, and takes approve or reject, the reviewer's name and
a comment. The answer is kept in `anomdet_runs.details.approval`. No answer within
ANOMDET_PROMOTION__APPROVAL_TIMEOUT_MINUTES rejects the challenger.

The run pauses rather than suspends: a suspended run is started again from the top by
its deployment, and `anomdet retrain` has none. While it waits it keeps its process and
its model's retraining slot, so no other retraining of the model starts meanwhile;
nothing is written before the answer, so a rejection leaves nothing to clean up. A
paused run needs a Prefect server whose UI or API can answer it (PREFECT_API_URL).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from prefect import get_client, get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from pydantic import Field

from anomdet.promotion import Decision
from anomdet.report import approval_markdown
from anomdet.settings import Settings
from tasks.events import emit_approval_requested
from tasks.report import tag_run

logger = logging.getLogger(__name__)

#: How often a paused run asks the server whether it was answered.
POLL_SECONDS = 5
#: The tag a run carries while it waits for an answer.
AWAITING = "awaiting-approval"
#: Tries, 0.2 s apart, to find the run paused and give its state a message.
PAUSE_NOTICE_TRIES = 150
#: Seconds the pause outlives the approval timeout, for anomdet's own "reject" to land.
EXPIRY_GRACE = 60


class ApprovalForm(RunInput):
    """The form a paused run shows in the UI (and takes through the API)."""

    decision: Literal["approve", "reject"] = Field(
        description="approve: the challenger becomes champion; reject: the champion stays")
    reviewer: str = Field("", max_length=200, description="your name, kept with the answer")
    comment: str = Field("", max_length=2000, description="why, in a sentence")


@dataclass(frozen=True)
class Approval:
    """A person's answer, or its absence: what `anomdet_runs.details.approval` keeps."""

    answer: Literal["approve", "reject", "timed out"]
    reviewer: str | None
    comment: str
    answered_at: str | None
    waited_seconds: float

    @property
    def approved(self) -> bool:
        return self.answer == "approve"

    def describe(self, comment: bool = True) -> str:
        """The answer in words, for the run's reason (`approved by Ada: looks right`);
        without the comment for a state message."""
        if self.answer == "timed out":
            minutes = self.waited_seconds / 60
            return f"no answer to the approval request within {minutes:.1f} minutes"
        who = f" by {self.reviewer}" if self.reviewer else ""
        said = f": {self.comment}" if self.comment and comment else ""
        return f"{'approved' if self.approved else 'rejected'}{who}{said}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ask_for_approval(settings: Settings, run_id: int, decision: Decision,
                     challenger: dict[str, Any], champion: dict[str, Any] | None,
                     baseline: dict[str, Any] | None,
                     champion_version: int | None) -> Approval:
    """Pause this flow run until a person answers the form, or the timeout passes."""
    run_log = get_run_logger()
    minutes = settings.promotion.approval_timeout_minutes
    form = ApprovalForm.with_initial_data(description=approval_markdown(
        decision, challenger, champion, baseline, champion_version, minutes))
    emit_approval_requested(settings.model_name, run_id=run_id,
                            champion_version=champion_version, metrics=challenger,
                            timeout_minutes=minutes, reason=decision.reason)
    waiting = (f"awaiting approval: the challenger passed the promotion rule; answer the form "
               f"(Resume, in this run's menu) within {minutes:g} minutes")
    run_log.info("%s", waiting)
    tag_run(AWAITING)
    started = time.monotonic()
    seconds = max(1.0, minutes * 60)
    # The timeout is an answer too: a run whose pause expires can no longer leave it (the
    # server fails it), so when no one has answered in time, anomdet answers "reject"
    # itself, through the same form, and the pause is set to expire a little later.
    expired = _Expiry(flow_run.get_id(), minutes)
    timer = threading.Timer(seconds, contextvars.copy_context().run, args=(expired.answer,))
    timer.daemon = True
    timer.start()
    _say_why_paused(flow_run.get_id(), waiting)
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=round(seconds) + EXPIRY_GRACE,
                                poll_interval=POLL_SECONDS, key=f"approve-run-{run_id}")
    except FlowPauseTimeout:  # not even anomdet's own answer got through
        answer = None
    finally:
        timer.cancel()
        tag_run(remove=(AWAITING,))
    waited = round(time.monotonic() - started, 1)
    if answer is None or expired.answered.is_set():
        approval = Approval("timed out", None, "", None, waited)
    else:
        approval = Approval(answer.decision, answer.reviewer.strip() or None,
                            answer.comment.strip(), datetime.now(UTC).isoformat(), waited)
    run_log.info("approval: %s", approval.describe())
    return approval


def _say_why_paused(flow_run_id: str | None, message: str) -> None:
    """Give the run's Paused state a message, in the background: Prefect's pause sets
    none, and the run list would show only "Paused". The state is set again, forced,
    with its details (pause key, input form, expiry) unchanged, the moment it appears."""
    if flow_run_id is None:
        return

    def say() -> None:
        with get_client(sync_client=True) as client:
            for _ in range(PAUSE_NOTICE_TRIES):
                state = client.read_flow_run(UUID(flow_run_id)).state
                if state is not None and state.is_paused():
                    client.set_flow_run_state(UUID(flow_run_id), state.model_copy(
                        update={"message": message}), force=True)
                    return
                time.sleep(0.2)

    def run() -> None:
        try:
            say()
        except Exception as exc:  # noqa: BLE001 - the pause itself stands without it
            logger.warning("could not give the paused run its message: %s", exc)

    threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True).start()


class _Expiry:
    """Answers a paused run's form with "reject" once its time is up."""

    def __init__(self, flow_run_id: str | None, minutes: float) -> None:
        self.flow_run_id = flow_run_id
        self.minutes = minutes
        self.answered = threading.Event()

    def answer(self) -> None:
        if self.flow_run_id is None:
            return
        with get_client(sync_client=True) as client:
            try:
                result = client.resume_flow_run(UUID(self.flow_run_id), run_input={
                    "decision": "reject", "reviewer": "",
                    "comment": f"no answer within {self.minutes:g} minutes"})
            except Exception as exc:  # noqa: BLE001 - the pause's own expiry remains
                logger.warning("could not answer the expired approval request: %s", exc)
                return
        # Rejected by the server when a person answered first: theirs stands.
        if result.status.value == "ACCEPT":
            self.answered.set()
