"""What our streams, bucket and consumers look like in JetStream (configuration, no server)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StreamSource,
)

from eventing.nats.streams import (
    ATTEMPTS_BUCKET,
    Consumer,
    archive_config,
    attempts_bucket,
    consumer_config,
    consumer_of,
    dead_letter_config,
    needs_update,
    stream_config,
)
from eventing.settings import Settings


def _stream(**environ: str) -> Settings:
    return Settings.from_environ(environ)


def test_the_event_stream_takes_every_subject_below_the_prefix() -> None:
    settings = _stream().stream

    config = stream_config(settings)

    assert config.name == settings.name
    assert config.subjects == [f"{settings.subject_prefix}.>"]
    assert config.retention == RetentionPolicy(settings.retention)
    assert config.duplicate_window == settings.duplicate_window


def test_discard_new_per_subject_only_with_a_per_subject_limit() -> None:
    limited = _stream(JS_STREAM_DISCARD_POLICY="new", JS_STREAM_MAX_MSGS_PER_TOPIC="5").stream
    unlimited = _stream(JS_STREAM_DISCARD_POLICY="new", JS_STREAM_MAX_MSGS_PER_TOPIC="-1").stream
    oldest = _stream(JS_STREAM_DISCARD_POLICY="old", JS_STREAM_MAX_MSGS_PER_TOPIC="5").stream

    assert stream_config(limited).discard_new_per_subject is True
    assert stream_config(limited).discard == DiscardPolicy.NEW
    assert stream_config(unlimited).discard_new_per_subject is False
    assert stream_config(oldest).discard_new_per_subject is False


def test_dead_letters_are_kept_for_their_age_whatever_else_happens() -> None:
    settings = _stream().stream

    config = dead_letter_config(settings)

    assert config.name == settings.dead_letter_name
    assert config.subjects == ["dlq.>"]
    assert config.retention == RetentionPolicy.LIMITS
    assert config.discard == DiscardPolicy.OLD
    assert config.max_age == settings.dead_letter_max_age
    assert config.duplicate_window is not None
    assert config.duplicate_window <= settings.dead_letter_max_age


def test_the_attempts_bucket_outlives_the_longest_wait() -> None:
    settings = _stream().stream

    bucket = attempts_bucket(settings)

    assert bucket.bucket == ATTEMPTS_BUCKET
    assert bucket.ttl == settings.dead_letter_max_age


def test_a_stream_is_updated_only_where_a_field_we_set_differs() -> None:
    wanted = stream_config(_stream().stream)

    assert not needs_update(wanted, wanted)
    assert not needs_update(replace(wanted, description="set by someone else"), wanted)
    assert needs_update(replace(wanted, max_msgs=wanted.max_msgs + 1), wanted)
    assert needs_update(replace(wanted, subjects=["other.>"]), wanted)
    # a field we leave unset (None) is the server's to choose
    assert not needs_update(wanted, replace(wanted, max_age=None))


def test_the_archive_sources_the_event_stream_and_drops_its_oldest_events() -> None:
    settings = _stream(EVENT_ARCHIVE_MAX_AGE="2h", EVENT_ARCHIVE_MAX_BYTES="5Mi").stream

    archive = archive_config(settings)

    assert archive is not None
    assert (archive.name, archive.subjects) == ("sap-archive", None)  # kyma.> is the stream's
    assert archive.sources == [StreamSource(name=settings.name)]
    assert (archive.retention, archive.discard) == (RetentionPolicy.LIMITS, DiscardPolicy.OLD)
    assert (archive.max_age, archive.max_bytes) == (7200, 5 * 2**20)
    assert archive_config(_stream(EVENT_ARCHIVE_MAX_AGE="0").stream) is None
    short = archive_config(_stream(EVENT_ARCHIVE_MAX_AGE="30s").stream)
    assert short is not None and short.duplicate_window == 30  # never beyond the age
    renamed = archive_config(_stream(JS_STREAM_NAME="events").stream)
    assert renamed is not None and needs_update(archive, renamed)  # sourced anew


CONSUMER = Consumer(
    name="c1",
    subjects=("kyma.shop.order.created.v1", "kyma.shop.order.paid.v1"),
    max_ack_pending=20,
    ack_wait=30.0,
    description="default/s/kyma.shop.order.created.v1",
    metadata={"managed-by": "eventing.manager", "subscription": "default/s"},
)


def test_our_consumers_are_durable_pull_consumers_with_explicit_acks() -> None:
    config = consumer_config(CONSUMER)

    assert (config.name, config.durable_name) == ("c1", "c1")
    assert config.ack_policy == AckPolicy.EXPLICIT
    assert config.deliver_policy == DeliverPolicy.NEW
    assert config.max_deliver == -1  # redelivered until acked, termed or dead-lettered
    assert config.filter_subjects == list(CONSUMER.subjects)
    assert (config.max_ack_pending, config.ack_wait) == (20, 30.0)
    assert config.metadata == dict(CONSUMER.metadata)


def _info(config: ConsumerConfig) -> ConsumerInfo:
    return ConsumerInfo(
        name=config.name or "",
        stream_name="eventing",
        config=config,
        created=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_a_consumer_reads_back_as_it_was_created() -> None:
    assert consumer_of(_info(consumer_config(CONSUMER))) == CONSUMER


def test_a_consumer_with_one_filter_subject_or_none_reads_back() -> None:
    single = ConsumerConfig(name="one", filter_subject="kyma.a", max_ack_pending=5, ack_wait=3.0)
    bare = ConsumerConfig(name="bare")

    assert consumer_of(_info(single)) == Consumer("one", ("kyma.a",), 5, 3.0)
    assert consumer_of(_info(bare)) == Consumer("bare", (), 0, 0.0)


def test_a_replay_consumer_starts_at_a_time_or_a_sequence_and_expires_unused() -> None:
    by_time = consumer_config(replace(CONSUMER, start_time=1_800_000_000.0))
    by_sequence = consumer_config(replace(CONSUMER, start_sequence=42, inactive_threshold=300.0))

    assert by_time.deliver_policy == DeliverPolicy.BY_START_TIME
    assert by_time.opt_start_time == datetime.fromtimestamp(1_800_000_000, UTC)
    assert (by_time.opt_start_seq, by_time.inactive_threshold) == (None, None)
    assert by_sequence.deliver_policy == DeliverPolicy.BY_START_SEQUENCE
    assert (by_sequence.opt_start_seq, by_sequence.opt_start_time) == (42, None)
    assert by_sequence.inactive_threshold == 300.0
    assert consumer_config(CONSUMER).deliver_policy == DeliverPolicy.NEW
