"""A wanted consumer as the kernel creates it, and the delivery job of one of its messages."""

from __future__ import annotations

from eventing.nats.messages import PulledMessage
from manager.consumers import Target, consumer
from manager.reconcile import MANAGED_BY, desired
from tests.eventing.test_subscription import manifest, parse

SUBSCRIPTION = parse(
    manifest({"types": ["order.received.v1"], "config": {"maxInFlightMessages": "7"}})
)
[SPEC] = desired((SUBSCRIPTION,), 30.0).values()


def test_a_consumer_is_marked_as_ours_with_its_subscription_and_file() -> None:
    made = consumer(SPEC)

    assert (made.name, made.subjects) == (SPEC.name, SPEC.subjects)
    assert (made.max_ack_pending, made.ack_wait) == (7, SPEC.ack_wait)
    assert made.description == f"default/lastorder-sub/{SPEC.subjects[0]}"
    assert made.metadata == {
        "managed-by": MANAGED_BY,
        "subscription": "default/lastorder-sub",
        "type": "order.received.v1",
        "origin": SPEC.origin,
    }


def test_shedding_raises_the_in_flight_limit_and_nothing_else() -> None:
    raised = consumer(SPEC, max_ack_pending=507)

    assert raised.max_ack_pending == 507
    assert {**raised.metadata} == {**consumer(SPEC).metadata}
    assert raised.subjects == SPEC.subjects


def test_a_pulled_message_becomes_the_job_of_the_current_sink() -> None:
    message = PulledMessage(
        data=b'{"id":"1"}',
        reply="$JS.ACK.x.y.1.5.5.0.0",
        stream_sequence=5,
        delivery_count=2,
    )

    job = Target(SUBSCRIPTION, SPEC).job(message)

    assert job.event == '{"id":"1"}'
    assert (job.sink, job.subscription) == (SUBSCRIPTION.sink, "default/lastorder-sub")
    assert (job.event_type, job.consumer) == ("order.received.v1", SPEC.name)
    assert (job.ack_subject, job.stream_sequence, job.delivery_count) == (message.reply, 5, 2)
    assert (job.ack_wait, job.policy) == (SPEC.ack_wait, SUBSCRIPTION.delivery)


def test_bytes_that_are_no_utf8_travel_as_they_were() -> None:
    message = PulledMessage(data=b'{"d":"\xff"}', reply="r", stream_sequence=1, delivery_count=1)

    job = Target(SUBSCRIPTION, SPEC).job(message)

    assert job.event.encode("utf-8", errors="surrogateescape") == b'{"d":"\xff"}'
