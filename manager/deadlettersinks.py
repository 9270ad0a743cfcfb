"""Dead-letter sinks: each dead letter of a subscription with ``spec.delivery.deadLetterSink``
also goes there, as a CloudEvent with Knative's extensions, through the workers.

For each type of such a subscription the manager keeps a durable consumer on the dead-letter
stream, ``<consumer>-dead-letter-sink`` (:func:`eventing.delivery.jobs.reading_consumer`),
filtered on ``dlq.<consumer>`` and starting at new dead letters when it is created, and pulls
it into jobs of origin ``dead-letter-sink``: the event as stored plus ``knativeerrorcode``,
``knativeerrordest`` and ``knativeerrordata`` (:func:`eventing.delivery.deadletters.
knative_event`), to the dead-letter sink, binary mode, with the subscription's retry policy and
none of its sink's credentials. The dead letter stays in the stream: only the consumer's ack
moves. A job that runs out of attempts is logged and acked (:mod:`workers.redrives`), never
dead-lettered again. The consumers go when the field or the subscription goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from eventing.delivery import jobs
from eventing.delivery.credentials import SinkCredentials
from eventing.delivery.deadletters import Letter, knative_event
from eventing.errors import ConsumerError, NotFound
from eventing.nats.client import JetStreamClient
from eventing.nats.messages import DEAD_LETTER_PREFIX, PulledMessage
from eventing.nats.streams import Consumer
from eventing.subscriptions.model import Subscription, TypeBinding
from eventing.tasks import cancel_and_wait
from manager.reconcile import MANAGED_BY, ack_wait_for

logger = logging.getLogger(__name__)

ORIGIN = "dead-letter-sink"
_FETCH_TIMEOUT = 1.0
_PAUSE = 1.0  #: seconds before a pull that failed binds again
_ACK = b"+ACK"


@dataclasses.dataclass(frozen=True, slots=True)
class Wanted:
    """A dead-letter sink consumer a subscription type needs."""

    subscription: Subscription
    binding: TypeBinding
    ack_wait: float

    @property
    def consumer(self) -> Consumer:
        return Consumer(
            name=jobs.reading_consumer(self.binding.consumer_name, ORIGIN),
            subjects=(f"{DEAD_LETTER_PREFIX}.{self.binding.consumer_name}",),
            max_ack_pending=self.subscription.max_in_flight,
            ack_wait=self.ack_wait,
            description=f"dead-letter sink of {self.subscription.key}/{self.binding.original_type}",
            metadata={
                "managed-by": MANAGED_BY,
                "subscription": self.subscription.key,
                "purpose": ORIGIN,
            },
        )


def wanted(subscriptions: tuple[Subscription, ...], least_ack_wait: float) -> dict[str, Wanted]:
    """The dead-letter sink consumers the subscriptions need, by name (pure)."""
    return {
        jobs.reading_consumer(binding.consumer_name, ORIGIN): Wanted(
            subscription, binding, ack_wait_for(subscription, least_ack_wait)
        )
        for subscription in subscriptions
        if subscription.dead_letter_sink
        for binding in subscription.bindings
    }


class DeadLetterSinks:
    """Keeps the dead-letter sink consumers and their pulls in line with the subscriptions."""

    def __init__(
        self, client: JetStreamClient, stream: str, enqueue: jobs.Enqueue, ack_wait: float
    ) -> None:
        self._client = client
        self._stream = stream
        self._enqueue = enqueue
        self._ack_wait = ack_wait
        self._wanted: dict[str, Wanted] = {}
        self._pulls: dict[str, asyncio.Task[None]] = {}  #: by consumer name; ended by stop()
        #: no consumer of ours was left at the last look (a manager that starts looks once)
        self._none_left = False

    async def reconcile(self, subscriptions: tuple[Subscription, ...]) -> None:
        """Create, update and delete the consumers; start and stop their pulls. NATS trouble is
        logged and tried again on the next reconcile."""
        self._wanted = wanted(subscriptions, self._ack_wait)
        if not self._wanted and self._none_left:
            return  # nothing wanted, and nothing of ours left on the stream at the last look
        js = self._client.jetstream
        try:
            actual = {
                c.name: c
                for c in await js.consumers(self._stream)
                if c.metadata.get("purpose") == ORIGIN
                and c.metadata.get("managed-by") == MANAGED_BY
            }
            for name in sorted(set(actual) - set(self._wanted)):
                await js.delete(self._stream, name)
                logger.info("deleted dead-letter sink consumer %s", name)
            for name, want in sorted(self._wanted.items()):
                current = actual.get(name)
                if (
                    current is None
                    or current.subjects != want.consumer.subjects
                    or (
                        abs(current.ack_wait - want.ack_wait) > 0.001
                        or current.max_ack_pending != want.consumer.max_ack_pending
                    )
                ):
                    await js.put(self._stream, want.consumer)
                    if current is None:
                        logger.info(
                            "created dead-letter sink consumer %s for %s",
                            name,
                            want.subscription.key,
                        )
            self._none_left = not self._wanted
        except NotFound:
            return  # no dead-letter stream yet: the client creates it, the next reconcile acts
        except ConsumerError as exc:
            logger.warning("dead-letter sink consumers not reconciled: %s", exc)
            return
        loop = asyncio.get_running_loop()
        for name in list(self._pulls):
            if name not in self._wanted:
                self._pulls.pop(name).cancel()
        for name in self._wanted:
            task = self._pulls.get(name)
            if task is None or task.done():
                self._pulls[name] = loop.create_task(self._pull(name), name=f"dls-{name}")

    async def stop(self) -> None:
        """End every pull."""
        pulls, self._pulls = list(self._pulls.values()), {}
        await cancel_and_wait(pulls)

    async def _pull(self, name: str) -> None:
        """Pull ``name`` into jobs while it is wanted, binding again after any failure."""
        while name in self._wanted:
            try:
                pull = await self._client.jetstream.pull(self._stream, name)
                try:
                    while name in self._wanted:
                        messages = await pull.fetch(1, _FETCH_TIMEOUT)
                        if messages:
                            await self._hand_over(name, messages)
                finally:
                    await pull.close()
            except (ConsumerError, OSError) as exc:
                logger.debug("pulling dead-letter sink consumer %s: %s", name, exc)
                await asyncio.sleep(_PAUSE)
            except Exception:
                logger.exception("pulling dead-letter sink consumer %s failed; again", name)
                await asyncio.sleep(_PAUSE)

    async def _hand_over(self, name: str, messages: list[PulledMessage]) -> None:
        want = self._wanted.get(name)
        if want is None:
            return  # removed meanwhile; the messages come back after the ack wait, if wanted
        work: list[jobs.DeliveryJob] = []
        for message in messages:
            job = sink_job(want, message)
            if job is None:
                logger.warning(
                    "dead letter %d of %s is no event the dead-letter sink can take; skipped",
                    message.stream_sequence,
                    want.subscription.key,
                )
                with contextlib.suppress(Exception):
                    await self._client.acknowledge(message.reply, _ACK, _FETCH_TIMEOUT)
            else:
                work.append(job)
        if work:
            try:
                await asyncio.to_thread(self._enqueue, work)
            except Exception as exc:  # JetStream hands them out again after the ack wait
                logger.warning("could not enqueue %d dead-letter sink job(s): %s", len(work), exc)


def sink_job(want: Wanted, message: PulledMessage) -> jobs.DeliveryJob | None:
    """The job that takes one dead letter to the dead-letter sink; None if it is no event."""
    subscription, binding = want.subscription, want.binding
    letter = Letter.of(message.stream_sequence, "", message.headers, message.published)
    try:
        event = knative_event(message.data.decode("utf-8", errors="surrogateescape"), letter)
    except ValueError:
        return None
    return jobs.DeliveryJob(
        event=event,
        sink=subscription.dead_letter_sink,
        subscription=subscription.key,
        event_type=letter.type or binding.original_type,
        consumer=binding.consumer_name,
        ack_subject=message.reply,
        stream_sequence=message.stream_sequence,
        delivery_count=message.delivery_count,
        ack_wait=want.ack_wait,
        policy=subscription.delivery,
        credentials=SinkCredentials(),  # the sink's secrets are for the sink alone
        origin=ORIGIN,
        published=message.published,
    )
