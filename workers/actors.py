"""The delivery actor: the one place that decides what happens to a JetStream message.

``declare`` registers ``deliver`` on a given broker (nothing is registered at import). The actor
is thin: the job the manager signed (:func:`eventing.delivery.jobs.admit`; any other is dropped
unread) → :func:`workers.attempts.run` → one ``match`` that acks, NAKs with a delay, or
dead-letters then acks. Nothing else in the project acks, NAKs or terminates. The outcome's
delivery ledger record (:mod:`workers.ledger`) goes with the ack that settles it.
dramatiq's own retries are off: the job retries as :func:`eventing.delivery.steps.next_step`
says, and JetStream redelivers. A settled message's count of failed attempts (see
:mod:`workers.attempts`) is deleted.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Collection, Iterator
from typing import Any

import dramatiq
import requests

from eventing.delivery import jobs, steps
from eventing.delivery.jobs import ACTOR, QUEUE, DeliveryJob
from eventing.errors import ConsumerError, PublishError, UntrustedJob
from eventing.redaction import mask_url
from eventing.settings import DeliverySettings, SourceSettings
from workers import attempts, deadline, redacted, redrives
from workers.connection import Acknowledger
from workers.ledger import Trail
from workers.metrics import DeliveryMetrics
from workers.secrets import Secrets

logger = logging.getLogger(__name__)

_TIME_LIMIT_MS = 60 * 60 * 1000  # a job's own timeouts end it long before


def declare(
    broker: dramatiq.Broker,
    settings: DeliverySettings,
    acks: Acknowledger,
    metrics: DeliveryMetrics,
    stopping: threading.Event | None = None,
    secrets: Secrets | None = None,
    *,
    key: bytes,
    streams: Collection[str],
) -> dramatiq.Actor[Any, Any]:
    """Register the delivery actor on ``broker`` and return it.

    ``secrets`` reads what jobs' credentials name (by default files, or Secrets of the
    cluster the default :class:`~eventing.settings.SourceSettings` name).

    ``stopping`` is set when the worker stops (:class:`workers.shutdown.GracefulStop`); jobs
    then hand their events back instead of going on, unless the sink has taken them. Only jobs
    signed with ``key`` whose ack subject is of one of ``streams`` are delivered
    (:func:`jobs.admit`).
    """
    stopping = stopping or threading.Event()
    outbound = (secrets or Secrets(SourceSettings())).outbound
    redacted.install(__name__)
    sessions = threading.local()
    extra = settings.extra_deliveries
    write = acks.write if acks.ledger else None

    def deliver(*args: Any, **kwargs: Any) -> None:
        # Any arguments at all: a forged message's odd ones are refused here, not by dramatiq's
        # call, whose TypeError it would log with the whole message.
        try:
            parsed = jobs.admit(
                kwargs.get("job"), kwargs.get("signature"), key=key, streams=streams
            )
        except UntrustedJob as exc:
            # Dropped: the message has no ack subject that may be touched. Its content stays
            # out of the log (it may be anyone's).
            metrics.refused.labels(exc.reason).inc()
            logger.warning("refused a delivery job (%s): %s", exc.reason, exc)
            return
        trail = Trail(parsed, write)
        where = f"{parsed.subscription} seq {parsed.stream_sequence} to {mask_url(parsed.sink)}"
        observed = redrives.LastAnswer(metrics.observer(parsed))
        try:
            outcome = attempts.run(
                parsed,
                _session(sessions),
                extra_deliveries=extra,
                keepalive=lambda: acks.keepalive(parsed.ack_subject),
                log=acks,
                observe=observed,
                stopping=stopping.is_set,
                outbound=outbound,
                trail=trail,
            )
        except attempts.Interrupted:
            # The worker is stopping (honcho kills it 5 s after SIGTERM): hand the event back
            # now, so another worker takes it at once instead of after the ack wait; it goes on
            # after the attempts counted so far.
            with _unsettled(where, trail):
                acks.nak(parsed.ack_subject, 0.0)
                logger.info("handed back %s: the worker is shutting down; %s", where, trail.names)
            return
        except Exception:
            # A fault of ours, not of the event or the sink (those are outcomes): give the
            # message back after the policy's delay instead of leaving it unsettled, holding a
            # place of the subscription's in-flight window until the ack wait. Its delivery
            # count ends it in a dead letter if the fault stays.
            delay = steps.after_a_fault(parsed.policy, parsed.delivery_count)
            logger.exception(
                "delivering %s failed; redelivering in %.0fs; %s", where, delay, trail.names
            )
            with _unsettled(where, trail):
                acks.nak(parsed.ack_subject, delay)
            return
        with _unsettled(where, trail):
            lettered = redrives.before_settling(parsed, outcome, acks, observed.answer)
            settle(parsed, outcome, trail, where, observed.answer, lettered)

    def settle(
        parsed: DeliveryJob,
        outcome: attempts.Outcome,
        trail: Trail,
        where: str,
        answer: bytes,
        lettered: bool,
    ) -> None:
        match outcome:
            case attempts.Delivered(status=status, attempts=made):
                acks.ack(parsed.ack_subject, trail.outcome("delivered"))
                if steps.may_be_counted(made, parsed.delivery_count):
                    acks.forget(parsed)
                logger.info(
                    "delivered %s: %d after %d attempt(s); %s", where, status, made, trail.names
                )
            case steps.RetryLater(delay=delay, attempts=made, reason=reason):
                acks.nak(parsed.ack_subject, delay)
                logger.info(
                    "redelivering %s in %.1fs after %d attempt(s): %s; %s",
                    where,
                    delay,
                    made,
                    reason,
                    trail.names,
                )
            case steps.DeadLetter(reason=reason, status=status, attempts=made):
                if not lettered:  # workers.redrives logged what it did instead
                    acks.dead_letter(parsed, reason, status, made, answer=answer)
                    logger.warning(
                        "dead-lettered %s after %d attempt(s): %s; %s",
                        where,
                        made,
                        reason,
                        trail.names,
                    )
                if parsed.origin != "dead-letter-sink":  # a redrive that failed again is one
                    metrics.dead_lettered(parsed)
                acks.ack(parsed.ack_subject, trail.outcome("dead-lettered", reason))
                acks.forget(parsed)

    declare_actor = dramatiq.actor(
        actor_name=ACTOR,
        queue_name=QUEUE,
        broker=broker,
        max_retries=0,
        time_limit=_TIME_LIMIT_MS,
    )
    return declare_actor(deliver)


@contextlib.contextmanager
def _unsettled(where: str, trail: Trail) -> Iterator[None]:
    """Log, without a traceback, a message that could not be settled: NATS is away longer than
    the acknowledger tries. JetStream redelivers it after the ack wait, so nothing is lost; a
    delivered event then arrives twice."""
    try:
        yield
    except (PublishError, ConsumerError, TimeoutError) as exc:
        logger.warning(
            "could not settle %s, JetStream will redeliver it: %s; %s", where, exc, trail.names
        )


def _session(local: threading.local) -> requests.Session:
    session: requests.Session | None = getattr(local, "session", None)
    if session is None:
        session = deadline.session()
        local.session = session
    return session
