"""The subscriptions' JetStream consumers: what exists, carrying out the plan, where each goes.

:mod:`manager.reconcile` decides (pure); this module reads the consumers the server has and
applies the plan through the kernel (:class:`~eventing.nats.consumers.ConsumerApi`), and a
:class:`Target` turns each message a wanted consumer hands out into a delivery job.
:mod:`manager.pulling` pulls the wanted consumers, :mod:`manager.shedding` bounds their
backlogs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from eventing.delivery import jobs
from eventing.errors import ConsumerError, NotFound
from eventing.nats.consumers import ConsumerApi
from eventing.nats.messages import PulledMessage
from eventing.nats.streams import Consumer
from eventing.subscriptions import matching
from eventing.subscriptions.model import Subscription
from manager.reconcile import (
    MANAGED_BY,
    Action,
    ActualConsumer,
    ConsumerSpec,
    Create,
    Delete,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a consumer's messages go right now (a sink change applies to the next job)."""

    subscription: Subscription
    spec: ConsumerSpec
    held: str | None = None  #: why its events wait instead of being pulled (a refused sink)

    def receives(self, message: PulledMessage) -> bool:
        """Whether the subscription receives this message's event, not merely shares the
        consumer's subject (:func:`eventing.subscriptions.matching.receives`)."""
        return matching.receives(self.subscription, self.spec.event_type, _text(message))

    def job(self, message: PulledMessage) -> jobs.DeliveryJob:
        """The delivery job of one message this consumer handed out."""
        return jobs.DeliveryJob(
            event=_text(message),
            sink=self.subscription.sink,
            subscription=self.subscription.key,
            event_type=self.spec.event_type,
            consumer=self.spec.name,
            ack_subject=message.reply,
            stream_sequence=message.stream_sequence,
            delivery_count=message.delivery_count,
            ack_wait=self.spec.ack_wait,
            policy=self.subscription.delivery,
            credentials=self.subscription.credentials,
            published=message.published,
        )


def _text(message: PulledMessage) -> str:
    # Bytes that are no UTF-8 (stored past the proxy) stay as surrogates, not replaced: the
    # worker dead-letters such an event with its bytes as they were.
    return message.data.decode("utf-8", errors="surrogateescape")


async def actual_consumers(js: ConsumerApi, stream: str) -> dict[str, ActualConsumer]:
    """Every consumer of ``stream``, as JetStream reports it.

    Raises:
        ConsumerError: the server could not be asked.
    """
    found: dict[str, ActualConsumer] = {}
    for consumer in await js.consumers(stream):
        metadata = consumer.metadata
        found[consumer.name] = ActualConsumer(
            name=consumer.name,
            subjects=consumer.subjects,
            max_ack_pending=consumer.max_ack_pending,
            ack_wait=consumer.ack_wait,
            managed=metadata.get("managed-by") == MANAGED_BY,
            subscription=metadata.get("subscription", ""),
            origin=metadata.get("origin"),
        )
    return found


async def apply(js: ConsumerApi, stream: str, actions: list[Action]) -> dict[str, str]:
    """Carry out ``actions``; the error of each consumer that could not be set up, by name
    (logged by the caller, once per change: past the consumer limit thousands fail alike)."""
    errors: dict[str, str] = {}
    for action in actions:
        try:
            if isinstance(action, Delete):
                await js.delete(stream, action.name)
                logger.info("deleted consumer %s", action.name)
            else:
                await js.put(stream, consumer(action.spec))
                verb = "created" if isinstance(action, Create) else "updated"
                logger.info(
                    "%s consumer %s for %s %s",
                    verb,
                    action.spec.name,
                    action.spec.subscription,
                    action.spec.event_type,
                )
        except NotFound:
            if not isinstance(action, Delete):
                errors[action.spec.name] = f"stream {stream} not found"
        except ConsumerError as exc:
            name = action.name if isinstance(action, Delete) else action.spec.name
            errors[name] = str(exc)
    return errors


def created(actions: list[Action]) -> list[ConsumerSpec]:
    """The specs of the consumers ``actions`` create."""
    return [a.spec for a in actions if isinstance(a, Create)]


def consumer(spec: ConsumerSpec, *, max_ack_pending: int | None = None) -> Consumer:
    """The consumer ``spec`` wants, marked as ours (``max_ack_pending`` overrides its own)."""
    return Consumer(
        name=spec.name,
        subjects=spec.subjects,
        max_ack_pending=max_ack_pending or spec.max_ack_pending,
        ack_wait=spec.ack_wait,
        description=f"{spec.subscription}/{spec.subjects[0]}",
        metadata={
            "managed-by": MANAGED_BY,
            "subscription": spec.subscription,
            "type": spec.event_type,
            "origin": spec.origin,
        },
    )
