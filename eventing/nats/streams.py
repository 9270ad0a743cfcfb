"""What our streams, consumers and key-value bucket look like in JetStream (configuration only).

No IO: these functions build nats-py's configuration objects from settings and read them back,
so :mod:`eventing.nats.client` and :mod:`eventing.nats.consumers` only send them. A consumer is
described by :class:`Consumer`, our own value, so that services never hold a nats-py type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
)

from eventing.nats.messages import DEAD_LETTER_PREFIX, LEDGER_PREFIX
from eventing.settings import StreamSettings

ATTEMPTS_BUCKET = "eventing-attempts"

#: The fields of a stream's configuration we set; a stream whose fields differ is updated.
_COMPARED = (
    "subjects",
    "retention",
    "discard",
    "num_replicas",
    "max_bytes",
    "max_msgs",
    "max_msgs_per_subject",
    "discard_new_per_subject",
    "max_age",
    "duplicate_window",
    "sources",
)


def stream_config(settings: StreamSettings) -> StreamConfig:
    """The configuration of the event stream: every subject below ``kyma.``."""
    return StreamConfig(
        name=settings.name,
        subjects=[f"{settings.subject_prefix}.>"],
        retention=RetentionPolicy(settings.retention),
        storage=StorageType(settings.storage),
        discard=DiscardPolicy(settings.discard),
        num_replicas=settings.replicas,
        max_bytes=settings.max_bytes,
        max_msgs=settings.max_msgs,
        max_msgs_per_subject=settings.max_msgs_per_subject,
        # Without this flag a subject at its limit silently drops its oldest events whatever
        # the discard policy says; with it, "new" refuses the publish (HTTP 507) instead.
        discard_new_per_subject=settings.discard == "new" and settings.max_msgs_per_subject > 0,
        max_age=settings.max_age,
        duplicate_window=settings.duplicate_window,
    )


def dead_letter_config(settings: StreamSettings) -> StreamConfig:
    """The dead-letter stream: ``dlq.<consumer>``, kept ``JS_DLQ_MAX_AGE`` whatever happens."""
    return StreamConfig(
        name=settings.dead_letter_name,
        subjects=[f"{DEAD_LETTER_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType(settings.storage),
        discard=DiscardPolicy.OLD,
        num_replicas=settings.replicas,
        max_age=settings.dead_letter_max_age,
        duplicate_window=min(settings.duplicate_window, settings.dead_letter_max_age),
    )


def archive_config(settings: StreamSettings) -> StreamConfig | None:
    """The replay archive: a copy of every event of the event stream, kept
    ``EVENT_ARCHIVE_MAX_AGE`` within ``EVENT_ARCHIVE_MAX_BYTES``, the oldest dropped first;
    None when ``EVENT_ARCHIVE_MAX_AGE`` is 0 (no archive).

    It *sources* the event stream instead of listening on ``kyma.>`` itself: a second stream on
    the same subjects is refused by JetStream, and the event stream keeps its interest
    retention. The server's sourcing consumer counts as one more interest on the event stream
    and acks what it copied, so an event published before any subscription existed is
    archived, and one every subscription acked still leaves (docs/guarantees.md).
    """
    if settings.archive_max_age <= 0:
        return None
    return _dropping_oldest(
        settings,
        settings.archive_max_age,
        settings.archive_max_bytes,
        name=settings.archive_name,
        sources=[StreamSource(name=settings.name)],
    )


def _dropping_oldest(
    settings: StreamSettings, max_age: float, max_bytes: int, **fields: Any
) -> StreamConfig:
    """A stream of limits retention, kept ``max_age`` within ``max_bytes``, the oldest messages
    dropped first (the ledger, the archive).

    Its duplicate window is set as the server would keep it (JetStream refuses one beyond the
    age, and stores 2 minutes for none): unset, every connection found the stream different and
    updated it. Neither stream needs its own: the event stream deduplicated already, and a
    repeated ledger record says nothing new.
    """
    return StreamConfig(
        retention=RetentionPolicy.LIMITS,
        storage=StorageType(settings.storage),
        discard=DiscardPolicy.OLD,
        num_replicas=settings.replicas,
        max_age=max_age,
        max_bytes=max_bytes,
        duplicate_window=min(settings.duplicate_window, max_age),
        **fields,
    )


def job_streams(settings: StreamSettings) -> frozenset[str]:
    """The streams whose messages delivery jobs settle: the events, the archive (replays) and
    the dead letters (redrives, dead-letter sinks)."""
    return frozenset({settings.name, settings.archive_name, settings.dead_letter_name})


def ledger_config(settings: StreamSettings) -> StreamConfig:
    """The delivery ledger (:mod:`eventing.delivery.ledger`): ``ledger.>``, limits retention,
    kept ``LEDGER_MAX_AGE`` within ``LEDGER_MAX_BYTES``, the oldest records dropped first."""
    return _dropping_oldest(
        settings,
        settings.ledger_max_age,
        settings.ledger_max_bytes,
        name=settings.ledger_name,
        subjects=[f"{LEDGER_PREFIX}.>"],
    )


def needs_update(current: StreamConfig, wanted: StreamConfig) -> bool:
    """Whether a stream as the server has it differs from ``wanted`` in a field we set."""
    return any(
        getattr(current, name) != getattr(wanted, name)
        for name in _COMPARED
        if getattr(wanted, name) is not None
    )


def attempts_bucket(settings: StreamSettings) -> KeyValueConfig:
    """The key-value bucket where workers count the failed attempts at each message.

    A count is rewritten after every failed attempt, so it only has to outlive the longest wait
    between two attempts; it is kept as long as dead letters (``JS_DLQ_MAX_AGE``, a week).
    """
    return KeyValueConfig(
        bucket=ATTEMPTS_BUCKET,
        storage=StorageType(settings.storage),
        replicas=settings.replicas,
        ttl=settings.dead_letter_max_age,
    )


@dataclass(frozen=True, slots=True)
class Consumer:
    """A durable pull consumer: explicit acks, new messages only (unless it starts at a time or
    a sequence, as a replay does), redelivered without limit.

    The same value describes a consumer to create and one the server reports, so a reconcile
    compares like with like.
    """

    name: str
    subjects: tuple[str, ...]
    max_ack_pending: int
    ack_wait: float  #: seconds
    description: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: where a new consumer starts: at this stream sequence (a redrive, a replay) if not 0, else
    #: at the first message stored at or after ``start_time`` (Unix seconds) if set, else at new
    #: messages
    start_sequence: int = 0
    start_time: float | None = None
    #: seconds without a pull after which JetStream deletes the consumer (None: never)
    inactive_threshold: float | None = None


def consumer_config(consumer: Consumer) -> ConsumerConfig:
    """The configuration that creates ``consumer``, or updates it in place."""
    deliver, start_time = DeliverPolicy.NEW, None
    if consumer.start_sequence:
        deliver = DeliverPolicy.BY_START_SEQUENCE
    elif consumer.start_time is not None:
        deliver = DeliverPolicy.BY_START_TIME
        start_time = datetime.fromtimestamp(consumer.start_time, UTC)
    return ConsumerConfig(
        name=consumer.name,
        durable_name=consumer.name,
        description=consumer.description,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=deliver,
        opt_start_seq=consumer.start_sequence or None,
        opt_start_time=start_time,
        ack_wait=consumer.ack_wait,
        max_deliver=-1,
        max_ack_pending=consumer.max_ack_pending,
        filter_subjects=list(consumer.subjects),
        metadata=dict(consumer.metadata),
        inactive_threshold=consumer.inactive_threshold,
    )


def consumer_of(info: ConsumerInfo) -> Consumer:
    """The consumer the server describes in ``info`` (one subject filter or several)."""
    config = info.config
    subjects = config.filter_subjects or ([config.filter_subject] if config.filter_subject else [])
    return Consumer(
        name=info.name,
        subjects=tuple(subjects),
        max_ack_pending=config.max_ack_pending or 0,
        ack_wait=config.ack_wait or 0.0,
        description=config.description or "",
        metadata=dict(config.metadata or {}),
    )
