"""The delivery job: the small JSON contract between the manager and the workers.

The manager enqueues one job per JetStream message and never acks; a worker delivers, then acks
through the message's reply subject from its own NATS connection. A job carries everything a
worker needs (the event as stored, the sink, the resolved retry policy), so workers hold no
subscription state and any worker anywhere can take any job. No objects, no pickles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import dramatiq

from eventing.delivery import brokers
from eventing.delivery.retries import DeliveryPolicy
from eventing.nats.messages import DEAD_LETTER_PREFIX, OutboundMessage
from eventing.settings import DeliverySettings
from eventing.wakeup import WakingRedisBroker

logger = logging.getLogger(__name__)

QUEUE = "eventing.delivery"
ACTOR = "deliver"


@dataclass(frozen=True, slots=True)
class DeliveryJob:
    """One delivery of one stored event to one subscription's sink."""

    event: str  #: the stored event, structured JSON (UTF-8 text; other bytes as surrogates)
    sink: str
    subscription: str  #: namespace/name
    event_type: str  #: the type as the subscription wrote it; sent as ce-type
    consumer: str  #: JetStream consumer name
    ack_subject: str  #: the message's reply subject, verbatim
    stream_sequence: int
    delivery_count: int  #: JetStream's num_delivered, 1 on the first delivery
    ack_wait: float  #: the consumer's ack wait (seconds); keepalives go out at a third of it
    policy: DeliveryPolicy

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "sink": self.sink,
            "subscription": self.subscription,
            "event_type": self.event_type,
            "consumer": self.consumer,
            "ack_subject": self.ack_subject,
            "stream_sequence": self.stream_sequence,
            "delivery_count": self.delivery_count,
            "ack_wait": self.ack_wait,
            "policy": self.policy.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeliveryJob:
        """Rebuild a job; ``KeyError``/``TypeError``/``ValueError`` on a malformed one."""
        return cls(
            event=str(data["event"]),
            sink=str(data["sink"]),
            subscription=str(data["subscription"]),
            event_type=str(data["event_type"]),
            consumer=str(data["consumer"]),
            ack_subject=str(data["ack_subject"]),
            stream_sequence=int(data["stream_sequence"]),
            delivery_count=int(data["delivery_count"]),
            ack_wait=float(data["ack_wait"]),
            policy=DeliveryPolicy.from_dict(data["policy"]),
        )


def dead_letter(
    job: DeliveryJob, reason: str, status: int | None, attempts: int
) -> OutboundMessage:
    """The dead letter of ``job``: the event as stored, with why and where it failed.

    Workers send one when an event runs out of attempts, the manager when it sheds a backlog.
    The message id makes a repeated dead letter (a crash before the ack) a duplicate.
    """
    headers = {
        "Eventing-Dead-Letter-Reason": _header_safe(reason),
        "Eventing-Dead-Letter-Status": str(status or ""),
        "Eventing-Dead-Letter-Attempts": str(attempts),
        "Eventing-Dead-Letter-Subscription": job.subscription,
        "Eventing-Dead-Letter-Type": _header_safe(job.event_type),
        "Eventing-Dead-Letter-Sink": _header_safe(job.sink),
        "Eventing-Dead-Letter-Stream-Sequence": str(job.stream_sequence),
        "Nats-Msg-Id": f"{job.consumer}-{job.stream_sequence}",
    }
    return OutboundMessage(
        subject=f"{DEAD_LETTER_PREFIX}.{job.consumer}",
        payload=job.event.encode("utf-8", errors="surrogateescape"),  # the bytes as stored
        headers=headers,
        event_type=job.event_type,
        event_source="",
    )


def _header_safe(value: str) -> str:
    return " ".join(value.split())[:500]


class Broker(Protocol):
    """The part of a dramatiq broker the manager uses."""

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any: ...


def make_broker(settings: DeliverySettings) -> dramatiq.Broker:
    """A dramatiq broker for ``BROKER_URL``: Redis (whose idle workers an enqueue wakes, see
    :mod:`eventing.wakeup`), or RabbitMQ with publisher confirms; with the credentials and TLS
    of :mod:`eventing.delivery.brokers`. Warns once when the broker is unauthenticated beyond
    loopback."""
    warning = brokers.unauthenticated_warning(settings)
    if warning:
        logger.warning("%s", warning)
    if settings.broker_url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        # Confirms make enqueue mean "RabbitMQ has it", which at-least-once needs.
        broker = RabbitmqBroker(url=brokers.rabbitmq_url(settings), confirm_delivery=True)
        brokers.secure_rabbitmq(broker.parameters, settings)
        return broker
    return WakingRedisBroker(client=brokers.redis_client(settings))


def enqueue(broker: Broker, jobs: list[DeliveryJob]) -> None:
    """Hand ``jobs`` to the workers through ``broker`` (blocking; call it off the event loop).

    Messages are addressed by queue and actor name, so the manager needs no actor object and
    never imports the workers.
    """
    messages: list[dramatiq.Message[Any]] = [
        dramatiq.Message(
            queue_name=QUEUE, actor_name=ACTOR, args=(), kwargs={"job": job.to_dict()}, options={}
        )
        for job in jobs
    ]
    if isinstance(broker, WakingRedisBroker):
        broker.enqueue_all(messages)  # one wake-up for the batch
        return
    for message in messages:
        broker.enqueue(message)
