"""Which dead-letter sink consumers the subscriptions need, and the jobs they make (pure)."""

from __future__ import annotations

import json

from eventing.delivery import deadletters
from eventing.nats.messages import PulledMessage
from manager.deadlettersinks import sink_job, wanted
from tests.eventing.test_subscription import manifest, parse

DLS = "https://dls.example/in"


def test_each_type_of_a_subscription_with_a_dead_letter_sink_gets_a_consumer_on_its_subject() -> (
    None
):
    with_sink = parse(
        manifest({"types": ["a.v1", "b.v1"], "delivery": {"deadLetterSink": DLS}}, name="with")
    )
    without = parse(manifest(name="without"))
    found = wanted((with_sink, without), 10.0)
    live = [binding.consumer_name for binding in with_sink.bindings]
    assert sorted(found) == sorted(f"{name}-dead-letter-sink" for name in live)
    assert sorted(w.consumer.subjects[0] for w in found.values()) == sorted(
        f"dlq.{n}" for n in live
    )
    assert all(w.consumer.metadata["purpose"] == "dead-letter-sink" for w in found.values())


def test_a_dead_letter_becomes_a_job_to_the_dead_letter_sink_with_knatives_extensions() -> None:
    subscription = parse(manifest({"delivery": {"deadLetterSink": DLS, "retry": 2}}))
    [want] = wanted((subscription,), 10.0).values()
    stored = {"specversion": "1.0", "id": "e1", "source": "myapp", "type": "order.received.v1"}
    headers = {deadletters.STATUS: "502", deadletters.SINK: subscription.sink}
    message = PulledMessage(
        json.dumps(stored).encode(), "$JS.ACK.sap-dlq.x.1.9.9.1.0", 9, 1, 5.0, headers
    )
    job = sink_job(want, message)
    assert job is not None
    assert (job.sink, job.origin, job.policy.retry) == (DLS, "dead-letter-sink", 2)
    assert job.consumer == subscription.bindings[0].consumer_name  # its dead letters' subject
    assert not job.credentials  # the sink's secrets stay the sink's
    event = json.loads(job.event)
    assert (event["knativeerrorcode"], event["knativeerrordest"]) == ("502", subscription.sink)
    assert sink_job(want, PulledMessage(b"not json", "r", 10, 1)) is None
