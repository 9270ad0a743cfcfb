"""No sink credential in the workers' metric labels, logs or dead letters; no job in dramatiq's
own log lines (it formats a failing message with all its arguments)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from eventing.delivery import jobs
from eventing.delivery.jobs import DeliveryJob
from eventing.delivery.ledger import Record
from eventing.settings import DeliverySettings
from testing.servers import free_port
from tests.workers.conftest import KEY, POLICY, STREAM, make_job, stored_event
from tests.workers.test_actors import RecordingAcks
from workers import actors
from workers.delivery import Attempt
from workers.metrics import DeliveryMetrics

SECRET = "s3cr3t-value"
CARD = "4111 1111 1111 1111"


class DeadLetters(RecordingAcks):
    """Keeps each dead letter as it would be stored."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: list[dict[str, str]] = []

    def dead_letter(
        self, job: DeliveryJob, reason: str, status: int | None, attempts: int, *, answer: bytes
    ) -> None:
        super().dead_letter(job, reason, status, attempts, answer=answer)
        self.stored.append(jobs.dead_letter(job, reason, status, attempts, answer=answer).headers)


class FailingAcks(RecordingAcks):
    """An ack that fails with a fault of ours: dramatiq logs the message it was processing."""

    def ack(self, reply: str, record: Record | None = None) -> None:
        raise RuntimeError("a bug")


def run(acks: RecordingAcks, job: DeliveryJob) -> None:
    broker = StubBroker()
    broker.emit_after("process_boot")
    actors.declare(broker, DeliverySettings(), acks, DeliveryMetrics(), key=KEY, streams={STREAM})
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        jobs.enqueue(broker, [job], KEY)
        broker.join(jobs.QUEUE, fail_fast=False)
    finally:
        worker.stop()
        broker.close()


@pytest.fixture
def unreachable_sink() -> Iterator[str]:
    yield f"http://user:{SECRET}@127.0.0.1:{free_port()}/hook?token={SECRET}"


def test_metric_labels_show_the_sink_without_credentials() -> None:
    metrics = DeliveryMetrics()
    sink = f"https://user:{SECRET}@sink.test/hook?token={SECRET}"
    metrics.observer(make_job(sink=sink))(Attempt(status=204, seconds=0.01))
    labels = [sample.labels for family in metrics.registry.collect() for sample in family.samples]
    assert {"sink": "https://***@sink.test/hook?token=***"}.items() <= labels[0].items()
    assert not any(SECRET in value for each in labels for value in each.values())


def test_logs_and_dead_letters_show_the_sink_without_credentials_and_no_event_data(
    unreachable_sink: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    acks = DeadLetters()
    policy = replace(POLICY, retry=1, backoff_delay=0.0)
    event = stored_event(data={"card": CARD})
    run(acks, make_job(sink=unreachable_sink, policy=policy, event=event))
    [headers] = acks.stored
    assert "cannot connect" in headers["Eventing-Dead-Letter-Reason"]
    assert SECRET not in str(headers)
    assert "retrying" in caplog.text and "dead-lettered" in caplog.text
    assert SECRET not in caplog.text and CARD not in caplog.text


def test_dramatiq_logs_a_failing_job_by_its_id_only(caplog: pytest.LogCaptureFixture) -> None:
    sink = f"http://user:{SECRET}@127.0.0.1:{free_port()}/hook"
    # The card in the data: the event's ce-id is shown on purpose (every attempt's line names it).
    job = make_job(sink=sink, event=stored_event(data={"card": CARD}))
    run(FailingAcks(), replace(job, policy=replace(POLICY, retry=0)))
    failures = [r for r in caplog.records if r.name.startswith("dramatiq")]
    assert failures, "dramatiq logged the failing message"
    assert SECRET not in caplog.text and CARD not in caplog.text
