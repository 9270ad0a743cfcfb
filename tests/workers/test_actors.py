"""The delivery actor on a StubBroker: the job contract and the one place that acks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from eventing.delivery import jobs
from eventing.delivery.jobs import DeliveryJob
from eventing.delivery.ledger import Record
from eventing.delivery.steps import NOTHING_MADE, Progress
from eventing.errors import BackendUnavailable
from eventing.settings import DeliverySettings
from testing.sink import SinkServer
from tests.workers.conftest import KEY, POLICY, STREAM, make_job
from workers import actors
from workers.metrics import DeliveryMetrics


class RecordingAcks:
    ledger = True

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.counts: dict[int, Progress] = {}
        self.unreachable = False  #: acks raise, as when NATS stays away too long
        self.records: list[Record] = []  #: delivery ledger records, in the order written

    def ack(self, reply: str, record: Record | None = None) -> None:
        if self.unreachable:
            raise BackendUnavailable("not confirmed within 15s")
        self.calls.append(("ack", reply))
        self.records += [record] if record is not None else []

    def nak(self, reply: str, delay: float, record: Record | None = None) -> None:
        self.calls.append(("nak", reply, round(delay)))
        self.records += [record] if record is not None else []

    def write(self, record: Record) -> None:
        self.records.append(record)

    def keepalive(self, reply: str) -> None:
        self.calls.append(("keepalive", reply))

    def dead_letter(
        self, job: DeliveryJob, reason: str, status: int | None, attempts: int, *, answer: bytes
    ) -> None:
        self.calls.append(("dead_letter", job.stream_sequence, status, attempts))

    def progress(self, job: DeliveryJob) -> Progress | None:
        self.calls.append(("progress", job.stream_sequence))
        return self.counts.get(job.stream_sequence, NOTHING_MADE)

    def record(self, job: DeliveryJob, progress: Progress) -> None:
        self.calls.append(("record", job.stream_sequence, progress.made))
        self.counts[job.stream_sequence] = progress

    def forget(self, job: DeliveryJob) -> None:
        self.calls.append(("forget", job.stream_sequence))
        self.counts.pop(job.stream_sequence, None)

    def outcomes(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] in ("ack", "nak", "dead_letter")]

    def counting(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] in ("progress", "record", "forget")]


@pytest.fixture
def acks() -> RecordingAcks:
    return RecordingAcks()


@pytest.fixture
def broker(acks: RecordingAcks) -> Iterator[StubBroker]:
    broker = StubBroker()
    broker.emit_after("process_boot")
    actors.declare(broker, DeliverySettings(), acks, DeliveryMetrics(), key=KEY, streams={STREAM})
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    yield broker
    worker.stop()
    broker.close()


def deliver(broker: StubBroker, job: DeliveryJob) -> None:
    jobs.enqueue(broker, [job], KEY)
    broker.join(jobs.QUEUE, fail_fast=True)  # an exception escaping the actor fails the test


def test_a_delivered_job_is_acked(
    broker: StubBroker, acks: RecordingAcks, sink_server: SinkServer
) -> None:
    job = make_job(sink=sink_server.url)
    deliver(broker, job)
    assert acks.outcomes() == [("ack", job.ack_subject)]
    assert acks.calls[0] == ("keepalive", job.ack_subject)
    [received] = sink_server.sink.received()
    assert received.headers["ce-id"] == "evt-1"


def test_an_ack_that_cannot_be_sent_is_logged_and_left_to_redelivery(
    broker: StubBroker,
    acks: RecordingAcks,
    sink_server: SinkServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    acks.unreachable = True
    job = make_job(sink=sink_server.url)

    deliver(broker, job)

    assert acks.outcomes() == []
    assert len(sink_server.sink.received()) == 1
    [warning] = [r for r in caplog.records if r.name == "workers.actors"]
    assert "could not settle" in warning.getMessage()
    assert "redeliver" in warning.getMessage()
    assert warning.exc_info is None


def test_a_refused_job_is_dead_lettered_then_acked(
    broker: StubBroker, acks: RecordingAcks, sink_server: SinkServer
) -> None:
    sink_server.sink.answer = lambda request: 400
    job = make_job(sink=sink_server.url)
    deliver(broker, job)
    assert acks.outcomes() == [("dead_letter", 7, 400, 1), ("ack", job.ack_subject)]


def test_a_failing_sink_gets_a_delayed_nak(
    broker: StubBroker, acks: RecordingAcks, sink_server: SinkServer
) -> None:
    sink_server.sink.answer = lambda request: 503
    job = make_job(
        sink=sink_server.url,
        policy=replace(POLICY, retry=2, backoff_delay=20.0, in_job_wait_max=1.0),
    )
    deliver(broker, job)
    [(verb, reply, delay)] = acks.outcomes()
    assert (verb, reply) == ("nak", job.ack_subject)
    assert 18 <= delay <= 22  # the second attempt's 20 s delay, jittered, waits in JetStream
    assert len(sink_server.sink.received(None)) == 1


def test_a_first_time_delivery_costs_no_count(
    broker: StubBroker, acks: RecordingAcks, sink_server: SinkServer
) -> None:
    deliver(broker, make_job(sink=sink_server.url))
    assert acks.counting() == []


def test_a_delivery_after_failures_forgets_its_count_after_the_ack(
    broker: StubBroker, acks: RecordingAcks, sink_server: SinkServer
) -> None:
    answers = iter([503, 503])
    sink_server.sink.answer = lambda request: next(answers, 200)
    job = make_job(sink=sink_server.url, policy=replace(POLICY, backoff_delay=0.01))
    deliver(broker, job)
    assert acks.counting() == [("record", 7, 1), ("record", 7, 2), ("forget", 7)]
    assert acks.calls.index(("ack", job.ack_subject)) < acks.calls.index(("forget", 7))
    assert acks.counts == {}


def test_a_redelivery_resumes_from_the_count_and_forgets_it_once_dead_lettered(
    broker: StubBroker, acks: RecordingAcks, sink_server: SinkServer
) -> None:
    sink_server.sink.answer = lambda request: 503
    acks.counts[7] = Progress(2, 0.0)  # long ago: no wait left before attempt 3
    job = make_job(
        sink=sink_server.url, delivery_count=2, policy=replace(POLICY, backoff_delay=0.01)
    )
    deliver(broker, job)
    assert acks.outcomes() == [("dead_letter", 7, 503, 4), ("ack", job.ack_subject)]
    assert acks.counting() == [("progress", 7), ("record", 7, 3), ("record", 7, 4), ("forget", 7)]
    assert len(sink_server.sink.received(None)) == 2  # attempts 3 and 4 of 1 + retry 3


def test_a_fault_of_ours_gives_the_message_back_after_a_delay(
    broker: StubBroker,
    acks: RecordingAcks,
    sink_server: SinkServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(reply: str) -> None:
        raise RuntimeError("a bug")

    acks.keepalive = broken  # type: ignore[method-assign]
    job = make_job(sink=sink_server.url, delivery_count=2, policy=replace(POLICY, backoff_delay=8))

    deliver(broker, job)  # nothing escapes the actor

    assert acks.outcomes() == [("nak", job.ack_subject, 16)]  # the second delivery's delay
    [error] = [r for r in caplog.records if r.name == "workers.actors"]
    assert "redelivering in 16s" in error.getMessage() and error.exc_info is not None


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {"job": {"sink": 1}}),
        (("4111 1111 1111 1111",), {}),
        ((), {"job": make_job().to_dict(), "signature": "hmac-sha256=00", "extra": 1}),
    ],
)
def test_a_message_the_manager_did_not_sign_is_dropped_unread(
    broker: StubBroker,
    acks: RecordingAcks,
    caplog: pytest.LogCaptureFixture,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """Whatever its arguments: none reaches dramatiq's call (whose errors log the message)."""
    broker.enqueue(
        dramatiq.Message(
            queue_name=jobs.QUEUE, actor_name=jobs.ACTOR, args=args, kwargs=kwargs, options={}
        )
    )
    broker.join(jobs.QUEUE, fail_fast=True)
    assert acks.calls == []
    [refused] = [r for r in caplog.records if r.levelname != "DEBUG"]
    assert refused.name == "workers.actors" and "refused a delivery job" in refused.getMessage()
    assert "4111" not in caplog.text and "sink.test" not in caplog.text


def test_the_job_contract_round_trips() -> None:
    job = make_job()
    assert DeliveryJob.from_dict(job.to_dict()) == job


def test_a_first_try_delivery_writes_one_ledger_record(
    broker: StubBroker, acks: RecordingAcks, sink_server: SinkServer
) -> None:
    job = make_job(sink=sink_server.url)
    deliver(broker, job)
    [record] = acks.records
    assert (record.outcome, record.source, record.id, record.type) == (
        "delivered",
        "myapp",
        "evt-1",
        "order.created.v1",
    )
    assert (record.subscription, record.sequence, record.origin) == ("default/orders", 7, "live")
    assert record.attempt is not None
    assert (record.attempt.number, record.attempt.kind, record.attempt.status) == (
        1,
        "answered",
        204,
    )


def test_each_failed_attempt_is_a_retrying_record_then_the_outcome(
    broker: StubBroker,
    acks: RecordingAcks,
    sink_server: SinkServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers = iter([503, 503])
    sink_server.sink.answer = lambda request: next(answers, 200)
    job = make_job(sink=sink_server.url, policy=replace(POLICY, backoff_delay=0.01))
    caplog.set_level("INFO")
    deliver(broker, job)
    shown = [
        (r.outcome, r.attempt.number, r.attempt.status, r.reason)
        for r in acks.records
        if r.attempt is not None
    ]
    assert shown == [
        ("retrying", 1, 503, "sink answered 503"),
        ("retrying", 2, 503, "sink answered 503"),
        ("delivered", 3, 200, ""),
    ]
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("workers.")]
    named = [line for line in lines if line.startswith(("retrying", "delivered"))]
    assert [line.split()[:2] for line in named] == [
        ["retrying", "default/orders"],
        ["retrying", "default/orders"],
        ["delivered", "default/orders"],
    ]
    assert all(line.endswith("; ce-id 'evt-1' source 'myapp'") for line in named)


def test_a_dead_letter_writes_one_record_with_its_last_attempt(
    broker: StubBroker, acks: RecordingAcks, sink_server: SinkServer
) -> None:
    sink_server.sink.answer = lambda request: 400
    deliver(broker, make_job(sink=sink_server.url))
    [record] = acks.records
    assert record.outcome == "dead-lettered"
    assert record.reason == "sink refused the event with 400"
    assert record.attempt is not None and record.attempt.status == 400
