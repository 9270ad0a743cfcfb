"""Several events in one delivery job: each is delivered and settled as a job of one would be.

The delivery actor on a StubBroker against a real HTTP sink on loopback; the jobs are enqueued
by :func:`eventing.delivery.jobs.enqueue`, as the manager enqueues them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from eventing.delivery import jobs, signatures
from eventing.delivery.jobs import DeliveryJob
from eventing.settings import DeliverySettings
from testing.sink import SinkServer
from tests.workers.conftest import KEY, POLICY, STREAM, make_job, stored_event
from tests.workers.test_actors import RecordingAcks
from workers import actors
from workers.metrics import DeliveryMetrics


@pytest.fixture
def acks() -> RecordingAcks:
    return RecordingAcks()


@pytest.fixture
def stopping() -> threading.Event:
    return threading.Event()


@pytest.fixture
def broker(acks: RecordingAcks, stopping: threading.Event) -> Iterator[StubBroker]:
    with worker_running(acks, stopping) as broker:
        yield broker


@contextlib.contextmanager
def worker_running(acks: RecordingAcks, stopping: threading.Event) -> Iterator[StubBroker]:
    """A StubBroker with the actor declared and a dramatiq worker on it, stopped at the end."""
    broker = StubBroker()
    broker.emit_after("process_boot")
    actors.declare(
        broker,
        DeliverySettings(),
        acks,
        DeliveryMetrics(),
        stopping,
        key=KEY,
        streams={STREAM},
    )
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        yield broker
    finally:
        worker.stop()
        broker.close()


def batch_of(count: int, sink: str, **changes: Any) -> list[DeliveryJob]:
    """``count`` jobs of one subscription, event ids ``evt-1``..., sequences 1..."""
    return [
        make_job(
            sink=sink,
            event=stored_event(id=f"evt-{n}"),
            ack_subject=f"$JS.ACK.sap.c0ffee.1.{n}.{n}.0.0",
            stream_sequence=n,
            published=1000.0 + n,
            **changes,
        )
        for n in range(1, count + 1)
    ]


def run(
    broker: StubBroker, messages: list[dramatiq.Message[Any]], *, fail_fast: bool = True
) -> None:
    for message in messages:
        broker.enqueue(message)
    broker.join(jobs.QUEUE, fail_fast=fail_fast)  # an exception escaping the actor fails it


class Captured:
    """The messages :func:`jobs.enqueue` makes, for a test to alter or count them."""

    def __init__(self) -> None:
        self.messages: list[dramatiq.Message[Any]] = []

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        self.messages.append(message)
        return message


def enqueued(batch: list[DeliveryJob], per_job: int) -> list[dramatiq.Message[Any]]:
    captured = Captured()
    jobs.enqueue(captured, batch, KEY, per_job=per_job)
    return captured.messages


def test_a_batch_travels_as_one_message_and_every_event_is_delivered_and_acked(
    broker: StubBroker, acks: RecordingAcks, sink_server: SinkServer
) -> None:
    batch = batch_of(5, sink_server.url)
    messages = enqueued(batch, per_job=5)
    assert len(messages) == 1 and "batch" in messages[0].kwargs
    shared = messages[0].kwargs["batch"]["shared"]
    assert shared["sink"] == sink_server.url and "event" not in shared

    run(broker, messages)

    assert sink_server.sink.ids() == [f"evt-{n}" for n in range(1, 6)]  # in order
    assert acks.outcomes() == [("ack", job.ack_subject) for job in batch]
    assert [(r.outcome, r.sequence, r.id) for r in acks.records] == [
        ("delivered", n, f"evt-{n}") for n in range(1, 6)
    ]


def test_a_fetch_is_cut_into_near_equal_jobs_and_a_lone_event_is_a_job_of_its_own() -> None:
    sizes = [len(m.kwargs["batch"]["events"]) for m in enqueued(batch_of(23, "http://s"), 6)]
    assert sizes == [6, 6, 6, 5]
    [lone] = enqueued(batch_of(1, "http://s"), per_job=6)
    assert set(lone.kwargs) == {"job", "signature"}  # the form every version reads
    assert len(enqueued(batch_of(4, "http://s"), per_job=1)) == 4


def test_only_jobs_that_share_everything_but_the_event_share_a_message() -> None:
    orders, other = batch_of(2, "http://one"), batch_of(2, "http://two")
    retried = [replace(job, policy=replace(POLICY, retry=1)) for job in batch_of(2, "http://one")]
    messages = enqueued([*orders, *other, *retried], per_job=10)
    sinks = [m.kwargs["batch"]["shared"]["sink"] for m in messages]
    assert sinks == ["http://one", "http://two", "http://one"]
    assert messages[2].kwargs["batch"]["shared"]["policy"]["retry"] == 1


def test_events_per_job_leaves_a_slow_sink_its_parallelism() -> None:
    assert jobs.events_per_job(200, batch_max=20, spread=32) == 6  # 200 / 6 = 33 jobs >= 32
    assert jobs.events_per_job(10, batch_max=20, spread=32) == 1  # a job per event, as before
    assert jobs.events_per_job(10_000, batch_max=20, spread=32) == 20


def test_a_sink_failing_one_event_of_a_batch_naks_that_one_and_delivers_the_others(
    broker: StubBroker, acks: RecordingAcks, sink_server: SinkServer
) -> None:
    sink_server.sink.answer = lambda request: 503 if request.headers["ce-id"] == "evt-2" else 204
    policy = replace(POLICY, retry=1, backoff_delay=20.0, in_job_wait_max=1.0)
    batch = batch_of(3, sink_server.url, policy=policy)

    run(broker, enqueued(batch, per_job=3))

    [first, (verb, reply, delay), third] = acks.outcomes()
    assert first == ("ack", batch[0].ack_subject) and third == ("ack", batch[2].ack_subject)
    assert (verb, reply) == ("nak", batch[1].ack_subject) and 18 <= delay <= 22
    assert sink_server.sink.ids() == ["evt-1", "evt-3"]


def test_a_fault_on_one_event_leaves_none_of_the_others_unsettled(
    broker: StubBroker, acks: RecordingAcks, sink_server: SinkServer
) -> None:
    batch = batch_of(3, sink_server.url)
    send = acks.keepalive

    def broken_for_the_second(reply: str) -> None:
        if reply == batch[1].ack_subject:
            raise RuntimeError("a bug")
        send(reply)

    acks.keepalive = broken_for_the_second  # type: ignore[method-assign]
    run(broker, enqueued(batch, per_job=3))

    # The fault in the keepalive for the second, waiting, fails neither the first event nor
    # the third; the second is given back after the policy's delay for a fault.
    assert acks.outcomes() == [
        ("ack", batch[0].ack_subject),
        ("nak", batch[1].ack_subject, 1),
        ("ack", batch[2].ack_subject),
    ]
    assert sink_server.sink.ids() == ["evt-1", "evt-3"]


def test_a_fault_while_settling_one_event_lets_the_others_settle_then_fails_the_message(
    broker: StubBroker,
    acks: RecordingAcks,
    sink_server: SinkServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    batch = batch_of(3, sink_server.url)
    ack = acks.ack

    def broken_for_the_first(reply: str, record: Any = None) -> None:
        if reply == batch[0].ack_subject:
            raise RuntimeError("a bug")
        ack(reply, record)

    acks.ack = broken_for_the_first  # type: ignore[method-assign]
    run(broker, enqueued(batch, per_job=3), fail_fast=False)

    assert acks.outcomes() == [("ack", batch[1].ack_subject), ("ack", batch[2].ack_subject)]
    [warning] = [r for r in caplog.records if r.name == "workers.actors" and "settling" in r.msg]
    assert "default/orders seq 1 failed (RuntimeError)" in warning.getMessage()
    # dramatiq was told: the message failed, as a job of one whose settling fails
    assert any(r.name.startswith("dramatiq") and r.levelname == "ERROR" for r in caplog.records)


def test_the_waiting_events_of_a_batch_get_keepalives_while_the_first_is_retried(
    broker: StubBroker, acks: RecordingAcks, sink_server: SinkServer
) -> None:
    answers = iter([503, 503])
    sink_server.sink.answer = lambda request: next(answers, 204)
    # A 0.3 s ack wait: keepalives every 0.1 s through the first event's two 0.4 s pauses.
    batch = batch_of(3, sink_server.url, ack_wait=0.3, policy=replace(POLICY, backoff_delay=0.4))

    run(broker, enqueued(batch, per_job=3))

    kept = [c[1] for c in acks.calls if c[0] == "keepalive"]
    assert kept.count(batch[2].ack_subject) >= 4  # at the start, then within each pause
    assert acks.outcomes() == [("ack", job.ack_subject) for job in batch]


def test_a_fast_batch_costs_one_keepalive_per_event(
    broker: StubBroker, acks: RecordingAcks, sink_server: SinkServer
) -> None:
    batch = batch_of(4, sink_server.url)
    run(broker, enqueued(batch, per_job=4))
    kept = [c[1] for c in acks.calls if c[0] == "keepalive"]
    assert kept == [job.ack_subject for job in batch]  # all at the start, none again


def test_a_stopping_worker_hands_back_the_events_of_a_batch_not_started(
    broker: StubBroker, acks: RecordingAcks, sink_server: SinkServer, stopping: threading.Event
) -> None:
    def stop_after_the_first(request: Any) -> int:
        stopping.set()  # SIGTERM while the sink has the first event
        return 204

    sink_server.sink.answer = stop_after_the_first
    batch = batch_of(3, sink_server.url)

    run(broker, enqueued(batch, per_job=3))

    assert acks.outcomes() == [
        ("ack", batch[0].ack_subject),
        ("nak", batch[1].ack_subject, 0),
        ("nak", batch[2].ack_subject, 0),
    ]
    assert sink_server.sink.ids() == ["evt-1"]


def test_a_job_queued_by_the_previous_version_is_delivered(
    broker: StubBroker, acks: RecordingAcks, sink_server: SinkServer
) -> None:
    """The message exactly as the version before batches wrote it (a rolling upgrade)."""
    job = make_job(sink=sink_server.url)
    document = job.to_dict()
    signature = signatures.sign(document, KEY)
    message = dramatiq.Message(
        queue_name="eventing.delivery",
        actor_name="deliver",
        args=(),
        kwargs={"job": document, "signature": signature},
        options={},
    )
    run(broker, [message])
    assert acks.outcomes() == [("ack", job.ack_subject)]
    assert sink_server.sink.ids() == ["evt-1"]


def altered_event(message: dramatiq.Message[Any]) -> None:
    message.kwargs["batch"]["events"][1]["ack_subject"] = "$JS.ACK.sap.c0ffee.1.99.99.0.0"


def altered_shared(message: dramatiq.Message[Any]) -> None:
    message.kwargs["batch"]["shared"]["sink"] = "http://attacker.test/"


def unsigned(message: dramatiq.Message[Any]) -> None:
    del message.kwargs["signature"]


def empty(message: dramatiq.Message[Any]) -> None:
    message.kwargs["batch"]["events"] = []
    message.kwargs["signature"] = signatures.sign(message.kwargs["batch"], KEY)


@pytest.mark.parametrize(
    ("alter", "reason"),
    [
        (altered_event, "bad-signature"),
        (altered_shared, "bad-signature"),
        (unsigned, "unsigned"),
        (empty, "malformed"),
    ],
)
def test_an_altered_batch_is_refused_whole_and_unread(
    broker: StubBroker,
    acks: RecordingAcks,
    sink_server: SinkServer,
    caplog: pytest.LogCaptureFixture,
    alter: Any,
    reason: str,
) -> None:
    [message] = enqueued(batch_of(3, sink_server.url), per_job=3)
    alter(message)
    run(broker, [message])
    assert acks.calls == [] and sink_server.sink.received(None) == []
    [refused] = [r for r in caplog.records if r.levelname != "DEBUG"]
    assert f"refused a delivery job ({reason})" in refused.getMessage()


def test_a_signed_batch_with_one_foreign_ack_subject_is_refused_whole(
    broker: StubBroker, acks: RecordingAcks, sink_server: SinkServer
) -> None:
    batch = batch_of(3, sink_server.url)
    batch[2] = replace(batch[2], ack_subject="orders.created")  # an event subject
    run(broker, enqueued(batch, per_job=3))
    assert acks.calls == [] and sink_server.sink.received(None) == []


def test_successful_deliveries_are_summed_in_info_lines(
    broker: StubBroker, sink_server: SinkServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "workers.actors")
    run(broker, enqueued(batch_of(4, sink_server.url), per_job=4))
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "workers.actors"]
    delivered = [(level, text.split(";")[0]) for level, text in lines if "delivered" in text]
    url = sink_server.url
    assert ("DEBUG", "delivering 4 events of default/orders in one job") in lines
    assert delivered == [
        ("INFO", f"delivered default/orders seq 1 to {url}: 204 after 1 attempt(s)"),
        ("DEBUG", f"delivered default/orders seq 2 to {url}: 204 after 1 attempt(s)"),
        ("DEBUG", f"delivered default/orders seq 3 to {url}: 204 after 1 attempt(s)"),
        ("DEBUG", f"delivered default/orders seq 4 to {url}: 204 after 1 attempt(s)"),
    ]


def test_a_summary_line_counts_the_deliveries_since_the_last_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    summary = actors.DeliveredSummary(logging.getLogger("summary"), every=3600)
    shown = [summary.count("default/orders") for _ in range(3)] + [summary.count("default/b")]
    summary.count("default/b")
    summary.flush()
    assert shown == [True, False, False, True]
    assert [r.getMessage() for r in caplog.records] == [
        "delivered 1 more event(s) of default/b within 3600s",
        "delivered 2 more event(s) of default/orders within 3600s",
    ]
    summary.flush()  # nothing since: no line
    assert len(caplog.records) == 2


def test_deliveries_not_yet_summed_are_logged_when_the_worker_stops(
    acks: RecordingAcks, sink_server: SinkServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The sum's timer is 10 s away when the worker stops: its line comes at the shutdown."""
    caplog.set_level(logging.INFO, "workers.actors")
    summed = "delivered 3 more event(s) of default/orders within 10s"
    with worker_running(acks, threading.Event()) as broker:
        run(broker, enqueued(batch_of(4, sink_server.url), per_job=4))
        assert summed not in caplog.messages
    assert caplog.messages.count(summed) == 1
