"""How the jobs that come from the dead-letter stream end: redrives and dead-letter sinks.

:mod:`workers.actors` hands their outcome here before it settles it as any other job's (acks
it). Their message is a dead letter in ``sap-dlq`` (read through ``<consumer>-redrive`` or
``<consumer>-dead-letter-sink``), which limits retention keeps whatever the ack does, so:

- a redrive the sink took deletes its dead letter, then is acked: never delivered twice by a
  later redrive (a crash in between leaves a deleted message, which JetStream does not
  redeliver);
- a redrive that fails for good stores an updated dead letter (the new reason, status,
  attempts and answer, one more redrive, the original stream sequence), then deletes the old
  one, then is acked: never duplicated (the replacement's ``Nats-Msg-Id`` names the old one's
  sequence, so a crash and a second try store it once), never lost (the old one goes only
  after the new one is stored);
- a dead-letter sink's job that runs out of attempts is logged and acked: the copy in
  ``sap-dlq`` stays, and a dead letter of a dead letter would only loop.

Temporary outcomes (a retry later) are the actor's, as for any job.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from eventing.delivery import deadletters, jobs, steps
from eventing.delivery.jobs import DeliveryJob
from workers import attempts
from workers.connection import Acknowledger
from workers.delivery import Attempt

logger = logging.getLogger(__name__)


class LastAnswer:
    """Passes each attempt on to ``observe`` and keeps what the sink answered last, for the
    dead letter (its first KiB, base64 in a header)."""

    def __init__(self, observe: Callable[[Attempt], None]) -> None:
        self._observe = observe
        self.answer = b""

    def __call__(self, attempt: Attempt) -> None:
        self.answer = attempt.answer
        self._observe(attempt)


def before_settling(
    job: DeliveryJob, outcome: attempts.Outcome, acks: Acknowledger, answer: bytes
) -> bool:
    """Do what a redrive's or a dead-letter sink's outcome needs before the actor settles it
    (acks, and writes its ledger record, as for any job); whether its dead letter is taken care
    of already, so the actor must not store one.

    Raises:
        PublishError, ConsumerError, TimeoutError: the dead-letter stream did not answer; the
            message is not acked, so it comes back after the ack wait and is settled then.
    """
    where = f"{job.subscription} dead letter {job.stream_sequence}"
    match job.origin, outcome:
        case "redrive", attempts.Delivered():
            acks.remove_dead_letter(job.dead_letter_sequence or job.stream_sequence)
            logger.info("redrove %s: its dead letter is deleted", where)
        case "redrive", steps.DeadLetter(reason=reason, status=status, attempts=made):
            _replace(job, reason, status, made, answer, acks)
            logger.warning(
                "redriving %s failed again after %d attempt(s): %s; its dead letter is replaced",
                where,
                made,
                reason,
            )
            return True
        case "dead-letter-sink", steps.DeadLetter(reason=reason, attempts=made):
            logger.warning(
                "the dead-letter sink of %s did not take %s after %d attempt(s): %s; it stays in"
                " the dead-letter stream",
                job.subscription,
                where,
                made,
                reason,
            )
            return True
    return False


def _replace(
    job: DeliveryJob,
    reason: str,
    status: int | None,
    made: int,
    answer: bytes,
    acks: Acknowledger,
) -> None:
    """Store the updated dead letter of a redrive that failed for good, then delete the old."""
    sequence = job.dead_letter_sequence or job.stream_sequence
    previous = acks.dead_letter_headers(sequence) or {}
    letter = jobs.dead_letter(job, reason, status, made, answer=answer)
    redrives = previous.get(deadletters.REDRIVES, "0")
    headers = {
        **letter.headers,
        deadletters.REDRIVES: str(int(redrives) + 1 if redrives.isdigit() else 1),
        # where the event came from in the first place, not the dead letter's own sequence
        deadletters.STREAM_SEQUENCE: previous.get(
            deadletters.STREAM_SEQUENCE, str(job.stream_sequence)
        ),
    }
    acks.store_dead_letter(dataclasses.replace(letter, headers=headers))
    acks.remove_dead_letter(sequence)
