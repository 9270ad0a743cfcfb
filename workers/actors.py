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
import math
import threading
import time
from collections.abc import Callable, Collection, Iterator
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
SUMMARY_EVERY = 10.0  #: seconds between two INFO lines that sum a subscription's deliveries


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
    (:func:`jobs.admit_message`). A batch's events go one after the other, each settled on its
    own as a job of one would be; those not started when the worker stops are handed back.
    """
    stopping = stopping or threading.Event()
    outbound = (secrets or Secrets(SourceSettings())).outbound
    redacted.install(__name__)
    sessions = threading.local()
    extra = settings.extra_deliveries
    write = acks.write if acks.ledger else None
    delivered = DeliveredSummary(logger)
    broker.add_middleware(SummedAtShutdown(delivered))

    def deliver(*args: Any, **kwargs: Any) -> None:
        # Any arguments at all: a forged message's odd ones are refused here, not by dramatiq's
        # call, whose TypeError it would log with the whole message.
        try:
            batch = jobs.admit_message(kwargs, key=key, streams=streams)
        except UntrustedJob as exc:
            # Dropped: the message has no ack subject that may be touched. Its content stays
            # out of the log (it may be anyone's).
            metrics.refused.labels(exc.reason).inc()
            logger.warning("refused a delivery job (%s): %s", exc.reason, exc)
            return
        sink = mask_url(batch[0].sink)
        if len(batch) > 1:
            logger.debug("delivering %d events of %s in one job", len(batch), batch[0].subscription)
        alive = _KeptAlive(batch, acks.keepalive)
        fault: Exception | None = None
        for index, parsed in enumerate(batch):
            if index and stopping.is_set():
                hand_back(batch[index:], sink)
                break
            alive.start(index)
            try:
                deliver_one(parsed, sink, alive.keepalive)
            except Exception as exc:  # a fault of ours while settling: the next events go on
                if len(batch) == 1:
                    raise  # dramatiq logs it by the message's id, as ever
                logger.warning(
                    "settling %s seq %d failed (%s); JetStream redelivers it after its ack wait",
                    parsed.subscription,
                    parsed.stream_sequence,
                    type(exc).__name__,
                )
                fault = fault or exc
        if fault is not None:
            raise fault  # once the others are settled: the message fails, as a job of one's does

    def hand_back(waiting: list[DeliveryJob], sink: str) -> None:
        """The events of a batch not started when the worker stops go back at once."""
        for parsed in waiting:
            where = f"{parsed.subscription} seq {parsed.stream_sequence} to {sink}"
            with _unsettled(where, Trail(parsed)):
                acks.nak(parsed.ack_subject, 0.0)
                logger.info("handed back %s: the worker is shutting down", where)

    def deliver_one(parsed: DeliveryJob, sink: str, keepalive: Callable[[], None]) -> None:
        trail = Trail(parsed, write)
        where = f"{parsed.subscription} seq {parsed.stream_sequence} to {sink}"
        observed = redrives.LastAnswer(metrics.observer(parsed))
        try:
            outcome = attempts.run(
                parsed,
                _session(sessions),
                extra_deliveries=extra,
                keepalive=keepalive,
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
                logger.log(
                    logging.INFO if delivered.count(parsed.subscription) else logging.DEBUG,
                    "delivered %s: %d after %d attempt(s); %s",
                    where,
                    status,
                    made,
                    trail.names,
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


class _KeptAlive:
    """The keepalives of one job's events: the event under way gets those
    :func:`workers.attempts.run` sends, and the events of its batch still waiting get one with
    them whenever theirs is a third of the ack wait old, so none passes its ack wait while the
    ones before it are delivered. An event kept alive while it waited is not kept alive again
    when it starts unless half of that time passed: a fast batch costs a keepalive per event,
    as jobs of one did."""

    def __init__(self, batch: list[DeliveryJob], send: Callable[[str], None]) -> None:
        self._batch = batch
        self._send = send
        self._index = 0
        self._interval = max(batch[0].ack_wait / 3, 0.1)
        self._sent = [-math.inf] * len(batch)  #: when each event had its last keepalive

    def start(self, index: int) -> None:
        self._index = index

    def keepalive(self) -> None:
        now = time.monotonic()
        current = self._index
        if now - self._sent[current] >= self._interval / 2:
            self._send(self._batch[current].ack_subject)
            self._sent[current] = now
        for waiting in range(current + 1, len(self._batch)):
            if now - self._sent[waiting] < self._interval:
                continue
            parsed = self._batch[waiting]
            try:
                self._send(parsed.ack_subject)
                self._sent[waiting] = now
            except Exception as exc:  # not the event under way's fault: it goes on
                # The waiting event may pass its ack wait: a redelivery, never a loss.
                logger.warning(
                    "could not keep %s seq %d alive: %s",
                    parsed.subscription,
                    parsed.stream_sequence,
                    exc,
                )


class DeliveredSummary:
    """Successful deliveries in INFO lines that sum them: a subscription's first delivery after
    a quiet :data:`SUMMARY_EVERY` has its own INFO line at once (so the quickstart's one event
    shows), the ones after it one line per subscription once the interval is over. Each of
    those is a DEBUG line; a retry, a hand-back and a dead letter keep their own line."""

    def __init__(self, log: logging.Logger, every: float = SUMMARY_EVERY) -> None:
        self._log = log
        self._every = every
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._last: dict[str, float] = {}  #: when each subscription's last line was logged
        self._flush: threading.Timer | None = None

    def count(self, subscription: str) -> bool:
        """Count one delivery; whether it gets an INFO line of its own (else a sum later)."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(subscription, -math.inf) >= self._every:
                self._last[subscription] = now
                return True
            self._counts[subscription] = self._counts.get(subscription, 0) + 1
            if self._flush is None:
                self._flush = threading.Timer(self._every, self.flush)
                self._flush.daemon = True
                self._flush.start()
            return False

    def flush(self) -> None:
        """Log the sums counted since each subscription's last line."""
        with self._lock:
            counts, self._counts, timer, self._flush = self._counts, {}, self._flush, None
            now = time.monotonic()
            for subscription in counts:
                self._last[subscription] = now
        if timer is not None:
            timer.cancel()  # flushed before its time (at shutdown): it has nothing left to log
        for subscription, count in sorted(counts.items()):
            self._log.info(
                "delivered %d more event(s) of %s within %.0fs", count, subscription, self._every
            )


class SummedAtShutdown(dramatiq.Middleware):
    """Logs the deliveries a :class:`DeliveredSummary` counted but has not logged yet when the
    worker process stops: its timer thread dies with the process, and the sums with it.
    ``after_worker_shutdown`` comes once dramatiq's worker threads have ended, so no job counts
    after it; added after the NATS connection's middleware, it runs before that one closes the
    connection (dramatiq calls ``after_*`` hooks in reverse order), so a NATS that does not
    close in time cannot make the process exit (``workers.shutdown``) before the sums are out."""

    def __init__(self, summary: DeliveredSummary) -> None:
        self._summary = summary

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._summary.flush()
