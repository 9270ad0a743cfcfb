"""The delivery job: the small JSON contract between the manager and the workers.

The manager enqueues a job per JetStream message and never acks; a worker delivers, then acks
through the message's reply subject from its own NATS connection. Several jobs of one
subscription fetched together may travel as one dramatiq message, a batch signed once that
writes what they share once (:func:`batch_document`, :func:`events_per_job`). A job carries
everything a worker needs (the event as stored, the sink, the resolved retry policy, where the
delivery's secrets are), so workers hold no subscription state and any worker can take any job.
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

    def shared(self) -> tuple[Any, ...]:
        """What this job shares with the other jobs of its batch (:data:`PER_EVENT` aside)."""
        return (
            self.sink,
            self.subscription,
            self.event_type,
            self.consumer,
            self.ack_wait,
            self.policy,
            self.credentials,
            self.origin,
        )

    def event_fields(self) -> dict[str, Any]:
        """The fields of this job that differ from event to event of a batch."""
        fields: dict[str, Any] = {
            "event": self.event,
            "ack_subject": self.ack_subject,
            "stream_sequence": self.stream_sequence,
            "delivery_count": self.delivery_count,
        }
        if self.published:
            fields["published"] = self.published
        if self.dead_letter_sequence:
            fields["dead_letter_sequence"] = self.dead_letter_sequence
        return fields

    def with_event_fields(self, data: dict[str, Any]) -> DeliveryJob:
        """This job with another event of its batch (``data``: :meth:`event_fields`'s form);
        ``KeyError``/``TypeError``/``ValueError`` on a malformed one."""
        return dataclasses.replace(
            self,
            event=str(data["event"]),
            ack_subject=str(data["ack_subject"]),
            stream_sequence=int(data["stream_sequence"]),
            delivery_count=int(data["delivery_count"]),
            published=float(data.get("published", 0.0)),
            dead_letter_sequence=int(data.get("dead_letter_sequence", 0)),
        )


#: The fields of a job that a batch carries per event; the others it carries once.
PER_EVENT = (
    "event",
    "ack_subject",
    "stream_sequence",
    "delivery_count",
    "published",
    "dead_letter_sequence",
)


def batch_document(batch: list[DeliveryJob]) -> dict[str, Any]:
    """The JSON of several jobs of one subscription: ``shared`` (what they have in common,
    written once) and ``events`` (:meth:`DeliveryJob.event_fields` of each, in order)."""
    shared = {k: v for k, v in batch[0].to_dict().items() if k not in PER_EVENT}
    return {"shared": shared, "events": [job.event_fields() for job in batch]}


def batch_from_document(document: dict[str, Any]) -> list[DeliveryJob]:
    """The jobs of :func:`batch_document`'s JSON; ``KeyError``/``TypeError``/``ValueError`` on a
    malformed one (no events is malformed too)."""
    shared, events = document["shared"], document["events"]
    if not isinstance(shared, dict) or not isinstance(events, list) or not events:
        raise ValueError("a batch needs its shared fields and one event or more")
    if not all(isinstance(fields, dict) for fields in events):
        raise TypeError("an event of the batch is no object")
    first = DeliveryJob.from_dict({**shared, **events[0]})
    return [first, *(first.with_event_fields(fields) for fields in events[1:])]


def _chunks(jobs: list[DeliveryJob], per_job: int) -> list[list[DeliveryJob]]:
    """``jobs`` in runs of consecutive jobs that share everything but :data:`PER_EVENT`, each
    run cut into as few near-equal chunks of at most ``per_job`` as it takes."""
    runs: list[list[DeliveryJob]] = []
    for job in jobs:
        if runs and per_job > 1 and runs[-1][0].shared() == job.shared():
            runs[-1].append(job)
        else:
            runs.append([job])
    chunks: list[list[DeliveryJob]] = []
    for run in runs:
        count = -(-len(run) // per_job)  # ceil
        size, larger = divmod(len(run), count)
        start = 0
        for index in range(count):
            end = start + size + (1 if index < larger else 0)
            chunks.append(run[start:end])
            start = end
    return chunks


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


def events_per_job(max_in_flight: int, batch_max: int, spread: int) -> int:
    """How many events of one subscription one job may carry: ``batch_max``, but no more than
    keep ``spread`` jobs among the ``max_in_flight`` events a subscription has out at once.

    A job's events are delivered one after the other, so a slow sink gets as many deliveries at
    once as there are jobs of its subscription: ``max_in_flight ÷ events_per_job``. Keeping that
    at ``spread`` or more (the workers' threads in all) keeps what a sink got with a job per
    event, ``min(max_in_flight, threads)``.
    """
    return max(1, min(batch_max, max_in_flight // max(1, spread)))


def enqueue(broker: Broker, jobs: list[DeliveryJob], key: bytes, *, per_job: int = 1) -> None:
    """Hand ``jobs`` to the workers through ``broker``, signed with ``key`` (blocking; call
    it off the event loop): up to ``per_job`` consecutive jobs of one subscription travel as one
    dramatiq message, signed once (:func:`batch_document`); a lone job as the job it is.

    Messages are addressed by queue and actor name, so the manager needs no actor object and
    never imports the workers.
    """
    messages: list[dramatiq.Message[Any]] = []
    for chunk in _chunks(jobs, per_job):
        if len(chunk) == 1:
            document = chunk[0].to_dict()
            kwargs = {"job": document, "signature": signatures.sign(document, key)}
        else:
            document = batch_document(chunk)
            kwargs = {"batch": document, "signature": signatures.sign(document, key)}
        messages.append(
            dramatiq.Message(queue_name=QUEUE, actor_name=ACTOR, args=(), kwargs=kwargs, options={})
        )
    if isinstance(broker, WakingRedisBroker):
        broker.enqueue_all(messages)  # one wake-up for the batch
        return
    for message in messages:
        broker.enqueue(message)


def admit_message(
    kwargs: dict[str, Any], *, key: bytes, streams: Collection[str]
) -> list[DeliveryJob]:
    """The jobs a dramatiq message carries, if the manager made them: a batch
    (:func:`batch_document`, signed once) or one job (what every version enqueues for a lone
    event, and all that versions before batches enqueued).

    Raises:
        UntrustedJob: see :func:`admit`; a batch is refused whole if any of its events' ack
            subjects is refused.
    """
    if "batch" not in kwargs:
        return [admit(kwargs.get("job"), kwargs.get("signature"), key=key, streams=streams)]
    document, signature = kwargs["batch"], kwargs.get("signature")
    _check_signed(document, signature, key)
    try:
        batch = batch_from_document(document)
    except (KeyError, TypeError, ValueError) as exc:
        raise UntrustedJob(
            "malformed", f"the batch does not parse ({type(exc).__name__})"
        ) from None
    for parsed in batch:
        _check_ack_subject(parsed, streams)
    return batch


def admit(job: Any, signature: Any, *, key: bytes, streams: Collection[str]) -> DeliveryJob:
    """The job a dramatiq message carries, if the manager made it.

    Raises:
        UntrustedJob: unsigned, signed with another key or altered, malformed, or with an ack
            subject outside the job's consumer on one of ``streams`` (the event stream, and
            the archive and dead-letter streams that replays and redrives read); its
            ``reason`` is one of :data:`UntrustedJob.REASONS` and its message never shows the
            job's content.
    """
    _check_signed(job, signature, key)
    try:
        parsed = DeliveryJob.from_dict(job)
    except (KeyError, TypeError, ValueError) as exc:
        raise UntrustedJob("malformed", f"the job does not parse ({type(exc).__name__})") from None
    _check_ack_subject(parsed, streams)
    return parsed


def _check_signed(document: Any, signature: Any, key: bytes) -> None:
    if not isinstance(document, dict):
        raise UntrustedJob("malformed", "the message carries no job")
    if not isinstance(signature, str) or not signature:
        raise UntrustedJob("unsigned", "the job carries no signature")
    if not signatures.signed_by(document, signature, key):
        raise UntrustedJob(
            "bad-signature",
            "the job's signature does not match (altered, or signed with another key than"
            " this worker's: the manager and the workers must share JOB_SIGNING_KEY_FILE)",
        )


def _check_ack_subject(parsed: DeliveryJob, streams: Collection[str]) -> None:
    problem = signatures.ack_subject_problem(
        parsed.ack_subject,
        streams=streams,
        consumer=reading_consumer(parsed.consumer, parsed.origin),
    )
    if problem is not None:
        raise UntrustedJob("bad-ack-subject", problem)
