"""The delivery job: the small JSON contract between the manager and the workers.

The manager enqueues one job per JetStream message and never acks; a worker delivers, then acks
through the message's reply subject from its own NATS connection. A job carries everything a
worker needs (the event as stored, the sink, the resolved retry policy, where the delivery's
secrets are), so workers hold no subscription state and any worker anywhere can take any job.
No objects, no pickles, and no secret in clear (see :mod:`eventing.delivery.credentials`). Every
job travels signed (:mod:`eventing.delivery.signatures`): workers act only on :func:`admit`'s jobs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

import dramatiq

from eventing.delivery import brokers, deadletters, signatures
from eventing.delivery.credentials import SinkCredentials
from eventing.delivery.retries import DeliveryPolicy
from eventing.errors import UntrustedJob
from eventing.nats.messages import DEAD_LETTER_PREFIX, OutboundMessage
from eventing.redaction import mask_url
from eventing.settings import DeliverySettings
from eventing.wakeup import WakingRedisBroker

logger = logging.getLogger(__name__)

QUEUE = "eventing.delivery"
ACTOR = "deliver"

#: Where a job comes from: ``live`` (a subscription's consumer on the event stream), ``replay``
#: (the archive, replayed on request or for a subscription that starts in the past), ``redrive``
#: (a dead letter sent again to its subscription's current sink), ``dead-letter-sink`` (a dead
#: letter sent to the subscription's ``spec.delivery.deadLetterSink``).
ORIGINS = ("live", "replay", "redrive", "dead-letter-sink")


def reading_consumer(consumer: str, origin: str) -> str:
    """The JetStream consumer that hands out the messages of jobs of ``origin`` for the
    subscription type whose live consumer is ``consumer``: that one itself on the event stream;
    ``<consumer>-replay`` on the archive, ``<consumer>-redrive`` and
    ``<consumer>-dead-letter-sink`` on the dead-letter stream. A job names its live consumer
    (dead letters go to ``dlq.<consumer>`` whatever the origin) and acks only its reader's
    messages (:func:`admit`)."""
    return consumer if origin == "live" else f"{consumer}-{origin}"


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
    #: where the worker finds the signing secret and sink credentials: references, never secrets
    credentials: SinkCredentials = dataclasses.field(default_factory=SinkCredentials)
    origin: str = "live"  #: one of :data:`ORIGINS`
    #: when JetStream stored the message (Unix seconds; 0.0: not known), for latency metrics
    published: float = 0.0
    #: a redrive's dead letter: its sequence in the dead-letter stream (0: not a redrive)
    dead_letter_sequence: int = 0

    def to_dict(self) -> dict[str, Any]:
        # What is at its default is left out: a live job is most jobs, and its size is the
        # broker's and the signature's work.
        optional: dict[str, Any] = {}
        if self.credentials:
            optional["credentials"] = self.credentials.to_dict()
        if self.origin != "live":
            optional["origin"] = self.origin
        if self.published:
            optional["published"] = self.published
        if self.dead_letter_sequence:
            optional["dead_letter_sequence"] = self.dead_letter_sequence
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
            **optional,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeliveryJob:
        """Rebuild a job; ``KeyError``/``TypeError``/``ValueError`` on a malformed one."""
        origin = str(data.get("origin", "live"))
        if origin not in ORIGINS:
            raise ValueError(f"unknown origin {origin!r}")
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
            credentials=SinkCredentials.from_dict(data.get("credentials", {})),
            origin=origin,
            published=float(data.get("published", 0.0)),
            dead_letter_sequence=int(data.get("dead_letter_sequence", 0)),
        )


def dead_letter(
    job: DeliveryJob, reason: str, status: int | None, attempts: int, *, answer: bytes = b""
) -> OutboundMessage:
    """The dead letter of ``job``: the event as stored, with why and where it failed, the
    event's source and id, and the first KiB of the sink's last ``answer``
    (:mod:`eventing.delivery.deadletters` reads it back).

    Workers send one when an event runs out of attempts, the manager when it sheds a backlog.
    The message id makes a repeated dead letter (a crash before the ack) a duplicate; it names
    the reading consumer, since a replay's or a redrive's sequence is of another stream.
    """
    source, event_id = deadletters.identity(job.event)
    headers = {
        deadletters.REASON: _header_safe(reason),
        deadletters.STATUS: str(status or ""),
        deadletters.ATTEMPTS: str(attempts),
        deadletters.SUBSCRIPTION: job.subscription,
        deadletters.TYPE: _header_safe(job.event_type),
        deadletters.SINK: _header_safe(mask_url(job.sink)),
        deadletters.STREAM_SEQUENCE: str(job.stream_sequence),
        deadletters.SOURCE: deadletters.encoded(source),
        deadletters.ID: deadletters.encoded(event_id),
        deadletters.ORIGIN: job.origin,
        "Nats-Msg-Id": f"{reading_consumer(job.consumer, job.origin)}-{job.stream_sequence}",
    }
    if answer:
        headers[deadletters.ANSWER] = deadletters.answer_header(answer)
    return OutboundMessage(
        subject=f"{DEAD_LETTER_PREFIX}.{job.consumer}",
        payload=job.event.encode("utf-8", errors="surrogateescape"),  # the bytes as stored
        headers=headers,
        event_type=job.event_type,
        event_source=source,
    )


def _header_safe(value: str) -> str:
    return " ".join(value.split())[:500]


#: What hands jobs to the workers, signed (:func:`enqueue` bound to a broker and a key); blocking.
Enqueue = Callable[[list[DeliveryJob]], None]


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


def enqueue(broker: Broker, jobs: list[DeliveryJob], key: bytes) -> None:
    """Hand ``jobs`` to the workers through ``broker``, each signed with ``key`` (blocking; call
    it off the event loop).

    Messages are addressed by queue and actor name, so the manager needs no actor object and
    never imports the workers.
    """
    messages: list[dramatiq.Message[Any]] = []
    for job in jobs:
        document = job.to_dict()
        signature = signatures.sign(document, key)
        messages.append(
            dramatiq.Message(
                queue_name=QUEUE,
                actor_name=ACTOR,
                args=(),
                kwargs={"job": document, "signature": signature},
                options={},
            )
        )
    if isinstance(broker, WakingRedisBroker):
        broker.enqueue_all(messages)  # one wake-up for the batch
        return
    for message in messages:
        broker.enqueue(message)


def admit(job: Any, signature: Any, *, key: bytes, streams: Collection[str]) -> DeliveryJob:
    """The job a dramatiq message carries, if the manager made it.

    Raises:
        UntrustedJob: unsigned, signed with another key or altered, malformed, or with an ack
            subject outside the job's consumer on one of ``streams`` (the event stream, and
            the archive and dead-letter streams that replays and redrives read); its
            ``reason`` is one of :data:`UntrustedJob.REASONS` and its message never shows the
            job's content.
    """
    if not isinstance(job, dict):
        raise UntrustedJob("malformed", "the message carries no job")
    if not isinstance(signature, str) or not signature:
        raise UntrustedJob("unsigned", "the job carries no signature")
    if not signatures.signed_by(job, signature, key):
        raise UntrustedJob(
            "bad-signature",
            "the job's signature does not match (altered, or signed with another key than"
            " this worker's: the manager and the workers must share JOB_SIGNING_KEY_FILE)",
        )
    try:
        parsed = DeliveryJob.from_dict(job)
    except (KeyError, TypeError, ValueError) as exc:
        raise UntrustedJob("malformed", f"the job does not parse ({type(exc).__name__})") from None
    problem = signatures.ack_subject_problem(
        parsed.ack_subject,
        streams=streams,
        consumer=reading_consumer(parsed.consumer, parsed.origin),
    )
    if problem is not None:
        raise UntrustedJob("bad-ack-subject", problem)
    return parsed
