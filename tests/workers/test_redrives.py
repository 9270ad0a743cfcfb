"""What a redrive's and a dead-letter sink's outcomes do to the dead-letter stream."""

from __future__ import annotations

import dataclasses
from typing import Any

from eventing.delivery import deadletters, jobs, steps
from eventing.delivery.jobs import DeliveryJob
from eventing.nats.messages import OutboundMessage
from tests.workers.conftest import POLICY
from workers import attempts, redrives

EVENT = '{"specversion":"1.0","id":"e1","source":"shop","type":"t.v1"}'
REDRIVE = DeliveryJob(
    EVENT, "http://sink/", "ns/s", "t.v1", "c0", "$JS.ACK.sap-dlq.c0-redrive.1.40.9.1.0", 40, 1, 30,
    POLICY, origin="redrive", dead_letter_sequence=40,
)  # fmt: skip


class DeadLetterStream:
    """The dead-letter stream as a dict of headers by sequence."""

    def __init__(self) -> None:
        self.letters: dict[int, dict[str, str]] = {40: {deadletters.STREAM_SEQUENCE: "7"}}
        self.stored: list[OutboundMessage] = []
        self.calls: list[str] = []

    def store_dead_letter(self, message: OutboundMessage) -> None:
        self.calls.append("store")
        self.stored.append(message)

    def dead_letter_headers(self, sequence: int) -> dict[str, str] | None:
        return self.letters.get(sequence)

    def remove_dead_letter(self, sequence: int) -> None:
        self.calls.append(f"remove {sequence}")
        self.letters.pop(sequence, None)


def settle(job: DeliveryJob, outcome: attempts.Outcome, stream: DeadLetterStream) -> bool:
    acks: Any = stream
    return redrives.before_settling(job, outcome, acks, b"still broken")


def test_a_delivered_redrive_deletes_its_dead_letter_and_is_then_settled_as_usual() -> None:
    stream = DeadLetterStream()
    assert settle(REDRIVE, attempts.Delivered(204, 1), stream) is False
    assert stream.calls == ["remove 40"] and not stream.letters


def test_a_redrive_that_fails_again_replaces_its_dead_letter_once_the_new_one_is_stored() -> None:
    stream = DeadLetterStream()
    assert settle(REDRIVE, steps.DeadLetter("answered 500", 500, 1), stream) is True
    assert stream.calls == ["store", "remove 40"]
    [letter] = stream.stored
    headers = letter.headers
    assert headers[deadletters.REDRIVES] == "1" and headers[deadletters.STREAM_SEQUENCE] == "7"
    assert headers[deadletters.STATUS] == "500" and headers[deadletters.ORIGIN] == "redrive"
    assert headers["Nats-Msg-Id"] == "c0-redrive-40"  # a second try is a duplicate
    assert letter.subject == "dlq.c0"


def test_a_dead_letter_sinks_failure_stores_nothing_and_a_live_job_is_left_alone() -> None:
    stream = DeadLetterStream()
    sink_job = dataclasses.replace(REDRIVE, origin="dead-letter-sink", dead_letter_sequence=0)
    assert settle(sink_job, steps.DeadLetter("answered 500", 500, 2), stream) is True
    live = dataclasses.replace(REDRIVE, origin="live", dead_letter_sequence=0)
    assert settle(live, steps.DeadLetter("answered 500", 500, 2), stream) is False
    assert stream.calls == [] and jobs.reading_consumer("c0", "redrive") == "c0-redrive"
