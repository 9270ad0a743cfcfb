"""Backlog shedding: a consumer never keeps more than ``MAX_BACKLOG`` events waiting.

Every stored event stays in the shared interest stream until each subscription that wants it is
done with it, so one dead sink would otherwise fill the stream and refuse every publisher
(Kyma's fleet-wide 507). Once a second, each pull task has its consumer's backlog checked here;
the oldest waiting events beyond the limit move to the dead-letter stream, each acked only once
its dead letter is stored. Shed events never reach the sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from eventing.delivery import deadletters, jobs, ledger
from eventing.errors import BackendUnavailable, ConsumerError
from eventing.nats.client import JetStreamClient
from eventing.nats.consumers import Pull
from eventing.nats.messages import PulledMessage
from eventing.redaction import mask_url
from eventing.subscriptions import matching
from manager.consumers import Target, consumer

logger = logging.getLogger(__name__)

_CHECK_INTERVAL = 1.0  # seconds between two backlog checks of a consumer
_CHUNK = 500  # events dead-lettered per round trip while shedding
_SHED_TIMEOUT = 5.0
_SWEEP_TIMEOUT = 0.5  # what was under way when the limit went back arrives within this
_ACK = b"+ACK"


@dataclass(frozen=True, slots=True)
class Backlog:
    """What a consumer's last backlog check found, and what shedding has done so far."""

    pending: int = 0  #: events stored for the consumer and not yet handed out
    shed: int = 0  #: events moved to the dead-letter stream since the manager started
    last_shed: float | None = None  #: wall-clock time of the latest shedding


@dataclass(frozen=True, slots=True)
class Limit:
    """How many events a consumer may keep waiting, and where the excess goes."""

    max_backlog: int
    dead_letter_stream: str
    publish_timeout: float  #: seconds a dead letter, and the ack of its event, may take
    #: where each shed event's ``dead-lettered`` record goes (empty: no ledger)
    ledger_stream: str = ""


class Shedding:
    """Checks backlogs and sheds what exceeds the limit, for every consumer pulled."""

    def __init__(
        self,
        client: JetStreamClient,
        stream: str,
        limit: Limit,
        on_shed: Callable[[str, int], None],
    ) -> None:
        self._client = client
        self._stream = stream
        self._limit = limit
        self._on_shed = on_shed
        self._due: dict[str, float] = {}  #: monotonic time of each consumer's next check
        self.backlogs: dict[str, Backlog] = {}  #: by consumer name, for status and metrics

    def forget(self, name: str) -> None:
        """The consumer ``name`` is no longer pulled: drop what is known of it."""
        self._due.pop(name, None)
        self.backlogs.pop(name, None)

    def due(self, name: str) -> bool:
        """Whether :meth:`check` of ``name`` would ask the server now."""
        return time.monotonic() >= self._due.get(name, 0.0)

    async def check(self, name: str, target: Target) -> None:
        """Once per ``_CHECK_INTERVAL``: record the backlog of ``name``, shed its excess."""
        now = time.monotonic()
        if now < self._due.get(name, 0.0):
            return
        self._due[name] = now + _CHECK_INTERVAL
        try:
            pending = await self._client.jetstream.pending(self._stream, name)
        except ConsumerError as exc:
            logger.debug("backlog of %s unknown: %s", name, exc)
            return
        backlog = self.backlogs.get(name, Backlog())
        self.backlogs[name] = replace(backlog, pending=pending)
        if pending > self._limit.max_backlog:
            await self._shed(name, target, pending - self._limit.max_backlog)

    async def _shed(self, name: str, target: Target, excess: int) -> None:
        """Move the ``excess`` oldest waiting events of ``name`` to the dead-letter stream.

        The consumer's ``max_ack_pending`` is full of events its sink is not taking, so it is
        raised by one chunk while shedding and set back afterwards (a crash in between is undone
        by the next reconcile, which sees the difference). Shedding pulls through a
        subscription of its own, swept empty before it closes: a fetch that times out leaves
        its pull request open on the server, and what that delivers late must be shed too.
        Pulled through the delivery subscription, it would become jobs beyond the sink's
        in-flight bound, each holding a worker thread through its retries (found by
        tests/faults/test_backlog.py).
        """
        js = self._client.jetstream
        reason = (
            f"backlog limit: more than MAX_BACKLOG={self._limit.max_backlog} events were waiting"
            f" for {mask_url(target.subscription.sink)}; the oldest are dead-lettered"
        )
        chunk = min(excess, _CHUNK)
        shed = 0
        shedding: Pull | None = None
        try:
            shedding = await js.pull(self._stream, name)
            raised = target.spec.max_ack_pending + chunk
            await js.put(self._stream, consumer(target.spec, max_ack_pending=raised))
            while shed < excess:
                messages = await shedding.fetch(min(chunk, excess - shed), _SHED_TIMEOUT)
                if not messages:
                    logger.warning(
                        "shedding the backlog of %s stopped: nothing came within %gs",
                        name,
                        _SHED_TIMEOUT,
                    )
                    break
                stored = await self._dead_letter(messages, target, reason)
                shed += stored
                if stored < len(messages):
                    break  # the dead-letter stream refused some; the rest come back later
        except (ConsumerError, BackendUnavailable) as exc:
            logger.warning("shedding the backlog of %s stopped: %s", name, exc)
        finally:
            with contextlib.suppress(ConsumerError):
                await js.put(self._stream, consumer(target.spec))
            if shedding is not None:
                shed += await self._sweep(shedding, target, reason)
        if shed:
            self._on_shed(name, shed)
            backlog = self.backlogs.get(name, Backlog())
            self.backlogs[name] = replace(backlog, shed=backlog.shed + shed, last_shed=time.time())
            logger.warning(
                "dead-lettered the %d oldest waiting events of %s (%s): over MAX_BACKLOG=%d",
                shed,
                target.subscription.key,
                target.spec.event_type,
                self._limit.max_backlog,
            )

    async def _sweep(self, shedding: Pull, target: Target, reason: str) -> int:
        """Shed what the server still delivers to ``shedding`` now that the consumer's limit
        is back (nothing new comes then, only what was under way), then close it."""
        swept = 0
        try:
            while messages := await shedding.fetch(_CHUNK, _SWEEP_TIMEOUT):
                swept += await self._dead_letter(messages, target, reason)
        except (ConsumerError, BackendUnavailable) as exc:
            logger.warning("sweeping the shed events of %s stopped: %s", target.spec.name, exc)
        finally:
            await shedding.close()
        return swept

    async def _dead_letter(self, messages: list[PulledMessage], target: Target, reason: str) -> int:
        """Store a dead letter for each message, then ack it; how many were both. A message
        the subscription does not receive (:meth:`Target.receives`) is acked without one.

        Raises:
            BackendUnavailable: an ack was not confirmed (its message comes back, is shed again).
        """
        own: list[PulledMessage] = []
        strangers: list[PulledMessage] = []
        for message in messages:
            (own if target.receives(message) else strangers).append(message)
        work = [target.job(message) for message in own]
        letters = [jobs.dead_letter(job, reason, None, job.delivery_count - 1) for job in work]
        outcomes = await self._client.publish_many(
            letters, self._limit.publish_timeout, stream=self._limit.dead_letter_stream
        )
        stored = [m for m, outcome in zip(own, outcomes, strict=True) if outcome is None]
        acked = [*stored, *strangers]
        await asyncio.gather(
            *(self._client.acknowledge(m.reply, _ACK, self._limit.publish_timeout) for m in acked)
        )
        for outcome in outcomes:
            if outcome is not None:
                logger.warning("a dead letter was not stored: %s", outcome)
                break
        await self._note(
            [job for job, outcome in zip(work, outcomes, strict=True) if outcome is None], reason
        )
        return len(stored)

    async def _note(self, shed: list[jobs.DeliveryJob], reason: str) -> None:
        """Write the ``dead-lettered`` ledger record (no attempt) of each event shed, as a
        worker does for one out of attempts, so its history and its subscription's status
        count it. Best effort, as every ledger record: the dead letter is what keeps it."""
        if not shed or not self._limit.ledger_stream:
            return
        now = time.time()
        records = []
        for job in shed:
            source, event_id = deadletters.identity(job.event)
            identity = matching.published(job.event)
            event_type = identity[1] if identity is not None else job.event_type
            if source and event_id:
                records.append(
                    ledger.Record(
                        job.subscription,
                        source,
                        event_id,
                        event_type,
                        job.stream_sequence,
                        job.origin,
                        "dead-lettered",
                        now,
                        reason=reason,
                    ).message()
                )
        outcomes = await self._client.publish_many(
            records, self._limit.publish_timeout, stream=self._limit.ledger_stream
        )
        failed = [outcome for outcome in outcomes if outcome is not None]
        if failed:
            logger.debug("%d shed record(s) not written to the ledger: %s", len(failed), failed[0])
