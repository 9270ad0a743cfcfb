"""One delivery job: do the steps the policy gives, one HTTP attempt at a time.

Pure of NATS and dramatiq: the caller passes a ``requests.Session``, a ``keepalive`` callable
that keeps the JetStream message alive, an :class:`AttemptLog` and a ``sleep``; :func:`run`
returns an :class:`Outcome` and never acks anything itself (``workers.actors`` does, in one
place). What comes next after each attempt is :func:`eventing.delivery.steps.next_step`'s
decision alone; :mod:`workers.delivery` makes and classifies the attempts.

Progress survives interruptions: after each failed attempt the job records how many were made,
and a redelivery resumes from there instead of trusting JetStream's delivery count, which a
worker killed or stopping mid-job advanced too.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import requests

from eventing.delivery import steps
from eventing.delivery.jobs import DeliveryJob
from eventing.delivery.steps import DeadLetter, Progress, RetryLater
from eventing.errors import PermanentDeliveryError, TemporaryDeliveryError
from eventing.redaction import mask_url
from workers import delivery
from workers.delivery import Attempt
from workers.ledger import Trail
from workers.secrets import NOTHING, Outbound

logger = logging.getLogger(__name__)

_SLEEP_STEP = 0.25
#: Seconds ``workers.connection`` goes on trying an ack that NATS does not confirm
ACK_TRIES_LAST = 15.0
_RNG = random.Random()  # jitter only; seeding one per job cost more than the rest of the job


@dataclass(frozen=True, slots=True)
class Delivered:
    status: int
    attempts: int


Outcome = Delivered | RetryLater | DeadLetter


class Interrupted(Exception):
    """The worker is stopping before the event had an outcome: the caller hands it back.

    Raised only where nothing is lost by stopping: before an attempt, in a wait, or after an
    attempt that failed. An attempt the sink answered 2xx always ends as :class:`Delivered`
    (dramatiq's own shutdown notice, an exception raised into the thread wherever it runs,
    landed after such answers too, and handed delivered events back for a second delivery).
    """


class AttemptLog(Protocol):
    """Where jobs keep their :class:`Progress` (``made`` and ``at``) across deliveries.

    Implementations never raise and never keep a job waiting long: a log that cannot answer
    costs the event its exact attempt count, never its delivery.
    """

    def progress(self, job: DeliveryJob) -> Progress | None:
        """What earlier deliveries made (``NOTHING_MADE`` if nothing); None if unknown."""
        ...

    def record(self, job: DeliveryJob, progress: Progress) -> None: ...


def run(
    job: DeliveryJob,
    session: requests.Session,
    *,
    extra_deliveries: int,
    keepalive: Callable[[], None],
    log: AttemptLog,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    observe: Callable[[Attempt], None] = lambda attempt: None,
    stopping: Callable[[], bool] = lambda: False,
    outbound: Callable[[DeliveryJob, bytes], Outbound] = lambda job, body: NOTHING,
    trail: Trail | None = None,
) -> Outcome:
    """Run the attempts that belong to this JetStream delivery of the event.

    A first delivery does not consult ``log``, so a sink that takes the event at once costs no
    request to it; a redelivery resumes after the attempts ``log`` recorded.

    Parameters:
        job: the delivery job.
        session: HTTP session (connection reuse across jobs of one thread); one from
            :func:`workers.deadline.session` holds every attempt to the policy's timeout.
        extra_deliveries: deliveries tolerated beyond the retry plan before dead-lettering.
        keepalive: restarts the message's ack wait; called at start (unless the ack wait
            certainly covers the first attempt, :func:`_ack_wait_covers`) and while waiting.
        log: where failed attempts are counted, and read back on a redelivery.
        sleep: waits between attempts (tests pass a fake).
        rng: jitter source.
        observe: told about every HTTP attempt.
        stopping: whether the worker is stopping; then no attempt starts, no wait goes on, and
            an attempt that fails is not counted (the shutdown may have cut it off).
        outbound: what each attempt adds (:meth:`workers.secrets.Secrets.outbound`: signed at
            the attempt's time); a secret it cannot read fails the attempt as temporary.
        trail: told the event's identity and every attempt; writes a ``retrying`` record after
            each failed attempt the policy goes on from (the caller writes the outcome's).

    Raises:
        Interrupted: the worker is stopping and the event has no outcome yet.
    """
    policy, rng = job.policy, rng or _RNG
    trail = trail or Trail(job)
    progress = log.progress(job) if job.delivery_count > 1 else steps.NOTHING_MADE

    def step_after(progress: Progress | None) -> steps.Step:
        return steps.next_step(
            policy,
            progress,
            job.delivery_count,
            time.time(),
            extra_deliveries=extra_deliveries,
            rng=rng,
        )

    step = step_after(progress)
    if isinstance(step, DeadLetter):
        trail.identify_stored()
        return step
    try:
        encoded = delivery.encode(job)
    except PermanentDeliveryError as exc:
        trail.identify_stored()
        return DeadLetter(str(exc), None, progress.made if progress is not None else 0)
    trail.identify(encoded.source, encoded.id, encoded.type)
    if not isinstance(step, steps.RunAttempt):
        return step
    headers, body = encoded.headers, encoded.body

    def seen(attempt: Attempt) -> None:
        observe(attempt)
        trail.observe(attempt)

    if not _ack_wait_covers(job, step):
        keepalive()
    interval = max(job.ack_wait / 3, 0.1)
    while isinstance(step, steps.RunAttempt):
        if step.pause:
            _sleep_alive(step.pause, sleep, keepalive, interval, stopping)
        if stopping():
            raise Interrupted
        trail.attempting(step.number)
        try:
            status = delivery.post(session, job, headers, body, seen, outbound(job, body))
        except PermanentDeliveryError as exc:
            return DeadLetter(str(exc), exc.status, step.number)
        except TemporaryDeliveryError as exc:
            if stopping():
                raise Interrupted from None
            counted = Progress(step.number, time.time())
            log.record(job, counted)
            failure = steps.Failure(str(exc), exc.status, exc.retry_after)
            step = step_after(Progress(counted.made, counted.at, failure))
            if not isinstance(step, DeadLetter):
                trail.retrying(str(exc))
            if isinstance(step, steps.RunAttempt):
                logger.info(
                    "retrying %s (seq %d) to %s: %s; %s",
                    job.subscription,
                    job.stream_sequence,
                    mask_url(job.sink),
                    exc,
                    trail.names,
                )
            continue
        return Delivered(status, step.number)
    return step


def _ack_wait_covers(job: DeliveryJob, step: steps.RunAttempt) -> bool:
    """Whether the message's ack wait certainly lasts past the first attempt without a keepalive.

    It does for a first delivery whose attempt starts at once and ends, at the policy's timeout,
    within half the ack wait counted from when JetStream stored the event: the ack wait began
    later, when the manager pulled it, and the other half covers clocks that disagree, and the
    tries of the ack while NATS is away (:data:`ACK_TRIES_LAST`; a shorter ack wait keeps the
    keepalive). Most events are such, and the keepalive each sent at its start was a NATS
    publish per event (3 % of a worker's CPU).
    """
    return (
        job.delivery_count == 1
        and not step.pause
        and job.published > 0
        and job.ack_wait / 2 >= ACK_TRIES_LAST
        and time.time() - job.published + job.policy.timeout <= job.ack_wait / 2
    )


def _sleep_alive(
    seconds: float,
    sleep: Callable[[float], None],
    keepalive: Callable[[], None],
    interval: float,
    stopping: Callable[[], bool],
) -> None:
    """Sleep ``seconds``, sending a keepalive every ``interval``.

    Sleeps in short steps and looks at ``stopping`` between them, so a long wait does not delay
    a worker's exit.

    Raises:
        Interrupted: the worker is stopping.
    """
    remaining, since_keepalive = seconds, 0.0
    while remaining > 0:
        if stopping():
            raise Interrupted
        step = min(remaining, _SLEEP_STEP)
        sleep(step)
        remaining -= step
        since_keepalive += step
        if since_keepalive >= interval or remaining <= 0:
            keepalive()
            since_keepalive = 0.0
