"""One delivery job against an in-memory sink: outcomes, retries, binary mode, and resuming
from the attempts counted in earlier deliveries."""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
import requests
import urllib3.exceptions

from eventing.delivery.jobs import DeliveryJob
from eventing.delivery.steps import DeadLetter, Progress, RetryLater
from eventing.errors import SinkRefused
from tests.workers.conftest import (
    POLICY,
    Clock,
    MemoryLog,
    ScriptedSink,
    make_job,
    raw_event,
    stored_event,
)
from workers import attempts as job_attempts
from workers import delivery
from workers.attempts import Delivered, Interrupted
from workers.delivery import Attempt

# Delays 1, 2 | 4 s: attempts 1-2 in the first job, 3 and 4 one per redelivery.
GROUPED = replace(POLICY, in_job_wait_max=1.5)


def run(
    job: DeliveryJob,
    session: requests.Session,
    clock: Callable[[float], None],
    keepalives: list[int] | None = None,
    attempts: list[Attempt] | None = None,
    log: MemoryLog | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> job_attempts.Outcome:
    return job_attempts.run(
        job,
        session,
        extra_deliveries=2,
        keepalive=lambda: keepalives.append(1) if keepalives is not None else None,
        log=log if log is not None else MemoryLog(),
        sleep=clock,
        rng=random.Random(1),
        observe=attempts.append if attempts is not None else lambda attempt: None,
        stopping=stopping,
    )


def stops_after(looks: int) -> Callable[[], bool]:
    """A worker that starts stopping after ``looks`` looks at whether it is stopping."""
    seen = 0

    def stopping() -> bool:
        nonlocal seen
        seen += 1
        return seen > looks

    return stopping


def test_delivered_in_binary_mode_as_the_subscription_types_it(
    sink: ScriptedSink, session: requests.Session, clock: Clock
) -> None:
    outcome = run(make_job(event_type="Order.Created.V1"), session, clock)
    assert outcome == Delivered(204, 1)
    [request] = sink.received
    assert request.headers["ce-type"] == "Order.Created.V1"
    assert request.headers["ce-id"] == "evt-1"
    assert request.headers["ce-source"] == "myapp"
    assert request.headers["ce-specversion"] == "1.0"
    assert request.headers["ce-originaltype"] == "order.created.v1"
    assert request.headers["content-type"] == "application/json"
    assert (
        request.headers["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    )
    assert "ce-traceparent" not in request.headers
    assert request.body == b'{"orderId":42}'


def test_binary_data_is_sent_byte_for_byte(
    sink: ScriptedSink, session: requests.Session, clock: Clock
) -> None:
    raw = b'{ "spaces" :  true }'
    event = stored_event(data=None, data_base64=base64.b64encode(raw).decode())
    run(make_job(event=event), session, clock)
    assert sink.received[0].body == raw


def test_json_string_data_keeps_its_quotes(
    sink: ScriptedSink, session: requests.Session, clock: Clock
) -> None:
    run(make_job(event=stored_event(data="plain text")), session, clock)
    assert sink.received[0].body == b'"plain text"'


def test_temporary_failures_are_retried_with_backoff(
    sink: ScriptedSink, session: requests.Session, clock: Clock
) -> None:
    sink.replies = [500, 503, 502, 200]
    keepalives: list[int] = []
    attempts: list[Attempt] = []
    outcome = run(make_job(), session, clock, keepalives, attempts)
    assert outcome == Delivered(200, 4)
    assert [a.status for a in attempts] == [500, 503, 502, 200]
    assert 6.3 <= clock.total <= 7.7  # 1 + 2 + 4 seconds, ±10 % jitter
    assert len(keepalives) >= 4  # at the start and after every wait


@pytest.mark.parametrize("status", [400, 401, 404, 410, 301, 302])
def test_permanent_answers_are_dead_lettered_at_once(
    sink: ScriptedSink, session: requests.Session, clock: Clock, status: int
) -> None:
    sink.replies = [status]
    outcome = run(make_job(), session, clock)
    assert isinstance(outcome, DeadLetter)
    assert outcome.status == status and outcome.attempts == 1
    assert len(sink.received) == 1


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_out_of_attempts_is_a_dead_letter(
    sink: ScriptedSink, session: requests.Session, clock: Clock, status: int
) -> None:
    sink.replies = [status] * 10
    outcome = run(make_job(), session, clock)
    assert isinstance(outcome, DeadLetter)
    assert outcome.status == status and outcome.attempts == 4
    assert "out of attempts" in outcome.reason


def test_connection_errors_and_timeouts_are_temporary(
    sink: ScriptedSink, session: requests.Session, clock: Clock
) -> None:
    sink.replies = [requests.ConnectionError("refused"), requests.ReadTimeout("slow"), 204]
    attempts: list[Attempt] = []
    assert run(make_job(), session, clock, attempts=attempts) == Delivered(204, 3)
    assert [a.status for a in attempts] == [None, None, 204]


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("event", "named"),
    [
        (raw_event(traceparent=TRACEPARENT + "\r\nX-Injected: 1"), "traceparent"),
        (raw_event(traceparent=TRACEPARENT + "\n"), "traceparent"),
        (raw_event(traceparent="00-ä-01"), "traceparent"),
        (raw_event(traceparent="00-€-01"), "traceparent"),
        (raw_event(tracestate="vendor=a\x00b"), "tracestate"),
        (raw_event(tracestate="vendor=a\x7fb"), "tracestate"),
        (raw_event(traceparent=TRACEPARENT, datacontenttype="text/plain;\r\n"), "content-type"),
        (raw_event(data=None, data_base64="!! not base64 !!"), "base64"),
        (raw_event(data=None, data_base64="!!!!abcd"), "base64"),  # lenient decoding: b"i\xb7\x1d"
        (raw_event(id=None), "id: required"),
        (raw_event(source=""), "source: required"),
        (raw_event(myext="\ud800"), "surrogate"),
        (raw_event().replace('"orderId"', '"\udcff"'), "not UTF-8"),
        ("{not json", "not valid JSON"),
    ],
)
def test_an_event_that_cannot_become_a_request_is_dead_lettered_without_one(
    sink: ScriptedSink, session: requests.Session, clock: Clock, event: str, named: str
) -> None:
    keepalives: list[int] = []
    outcome = run(make_job(event=event), session, clock, keepalives)
    assert isinstance(outcome, DeadLetter)
    assert outcome.attempts == 0 and outcome.status is None
    assert "cannot be sent as an HTTP request" in outcome.reason
    assert named in outcome.reason
    assert outcome.reason.isascii()  # it becomes a NATS header of the dead letter
    assert sink.received == [] and keepalives == [] and clock.slept == []


@pytest.mark.parametrize(
    ("failure", "permanent"),
    [
        (ValueError("Invalid header value b'a\\r\\nb'"), True),  # http.client refuses it
        (UnicodeEncodeError("latin-1", "€", 0, 1, "ordinal not in range(256)"), True),
        (requests.exceptions.InvalidURL("bad"), True),
        (OSError("a socket error requests did not wrap"), False),
        (RuntimeError("anything else"), False),
    ],
)
def test_every_failure_to_send_is_classified(
    sink: ScriptedSink, session: requests.Session, clock: Clock, failure: Exception, permanent: bool
) -> None:
    sink.replies = [failure, 204]
    attempts: list[Attempt] = []
    outcome = run(make_job(), session, clock, attempts=attempts)
    if permanent:
        assert isinstance(outcome, DeadLetter) and outcome.attempts == 1
        assert "cannot send to the sink" in outcome.reason
        assert [a.status for a in attempts] == [None]
    else:
        assert outcome == Delivered(204, 2)
        assert [a.status for a in attempts] == [None, 204]


def test_long_delays_hand_over_to_jetstream(
    sink: ScriptedSink, session: requests.Session, clock: Clock, log: MemoryLog
) -> None:
    policy = replace(POLICY, retry=5, in_job_wait_max=3.0)  # delays 1, 2 | 4 | 8 | 16
    sink.replies = [500] * 10
    outcome = run(make_job(policy=policy), session, clock, log=log)
    assert isinstance(outcome, RetryLater)
    assert outcome.attempts == 3
    assert 3.6 <= outcome.delay <= 4.4
    log.elapse(outcome.delay)
    later = run(make_job(delivery_count=2, policy=policy), session, clock, log=log)
    assert isinstance(later, RetryLater) and later.attempts == 4 and 7.2 <= later.delay <= 8.8
    for count in (3, 4):
        log.elapse(16 * 1.1)
        outcome = run(make_job(delivery_count=count, policy=policy), session, clock, log=log)
    assert isinstance(outcome, DeadLetter) and outcome.attempts == 6
    assert len(sink.received) == 6
    assert log.writes == [1, 2, 3, 4, 5, 6]


def test_a_long_retry_after_ends_the_job_early(
    sink: ScriptedSink, session: requests.Session, clock: Clock
) -> None:
    sink.replies = [(429, {"Retry-After": "20"})]
    outcome = run(make_job(), session, clock)
    assert isinstance(outcome, RetryLater)
    assert outcome.delay == 20.0
    assert len(sink.received) == 1


def test_a_short_retry_after_is_waited_in_the_job(
    sink: ScriptedSink, session: requests.Session, clock: Clock
) -> None:
    sink.replies = [(503, {"Retry-After": "6"}), 204]
    assert run(make_job(), session, clock) == Delivered(204, 2)
    assert clock.total >= 6.0


def test_a_first_delivery_that_succeeds_never_touches_the_log(
    sink: ScriptedSink, session: requests.Session, clock: Clock, log: MemoryLog
) -> None:
    assert run(make_job(), session, clock, log=log) == Delivered(204, 1)
    assert (log.reads, log.writes) == (0, [])


def test_every_failed_attempt_is_counted(
    sink: ScriptedSink, session: requests.Session, clock: Clock, log: MemoryLog
) -> None:
    sink.replies = [500, requests.ConnectionError("refused"), 400]
    outcome = run(make_job(), session, clock, log=log)
    assert isinstance(outcome, DeadLetter) and outcome.attempts == 3
    assert log.writes == [1, 2]  # the refusal dead-letters: no count needed after it


class HandedBack(Exception):
    """Stands for any interruption of a job asleep between attempts."""


def hand_back(seconds: float) -> None:
    raise HandedBack


def test_a_handed_back_event_resumes_where_it_stopped(
    sink: ScriptedSink, session: requests.Session, log: MemoryLog
) -> None:
    sink.replies = [503] * 10
    with pytest.raises(HandedBack):
        run(make_job(policy=GROUPED), session, hand_back, log=log)
    clock = Clock()
    resumed = run(make_job(delivery_count=2, policy=GROUPED), session, clock, log=log)
    assert 0.85 <= clock.total <= 1.1  # what is left of the 1 s wait before attempt 2
    assert isinstance(resumed, RetryLater) and resumed.attempts == 2
    log.elapse(resumed.delay)
    third = run(make_job(delivery_count=3, policy=GROUPED), session, clock, log=log)
    assert isinstance(third, RetryLater) and third.attempts == 3
    log.elapse(third.delay)
    last = run(make_job(delivery_count=4, policy=GROUPED), session, clock, log=log)
    assert isinstance(last, DeadLetter) and last.attempts == 4
    assert len(sink.received) == 4  # 1 + retry 3, although the interruption cost a delivery


def test_without_a_count_the_delivery_count_decides(
    sink: ScriptedSink, session: requests.Session
) -> None:
    """The fallback when the key-value store cannot answer: an interrupted delivery still
    counts, so the event skips ahead to the next group."""
    log = MemoryLog(reachable=False)
    sink.replies = [503] * 10
    with pytest.raises(HandedBack):
        run(make_job(policy=GROUPED), session, hand_back, log=log)
    clock = Clock()
    second = run(make_job(delivery_count=2, policy=GROUPED), session, clock, log=log)
    assert isinstance(second, RetryLater) and second.attempts == 3
    last = run(make_job(delivery_count=3, policy=GROUPED), session, clock, log=log)
    assert isinstance(last, DeadLetter) and last.attempts == 4
    assert len(sink.received) == 3


def test_a_count_beyond_the_plan_dead_letters_without_a_request(
    sink: ScriptedSink, session: requests.Session, clock: Clock, log: MemoryLog
) -> None:
    log.counts[7] = Progress(4, time.time() - 60)  # killed after the last attempt failed
    outcome = run(make_job(delivery_count=2), session, clock, log=log)
    assert isinstance(outcome, DeadLetter) and outcome.attempts == 4
    assert "out of attempts" in outcome.reason
    assert sink.received == []


def test_a_wait_that_is_not_over_goes_back_to_jetstream(
    sink: ScriptedSink, session: requests.Session, clock: Clock, log: MemoryLog
) -> None:
    log.counts[7] = Progress(2, time.time())  # attempt 3 is due in 2 s, beyond the in-job wait
    outcome = run(make_job(delivery_count=2, policy=GROUPED), session, clock, log=log)
    assert isinstance(outcome, RetryLater) and outcome.attempts == 2
    assert 1.5 <= outcome.delay <= 2.2
    assert sink.received == []


def test_a_redelivery_without_a_count_starts_the_plan(
    sink: ScriptedSink, session: requests.Session, clock: Clock, log: MemoryLog
) -> None:
    # No failed attempt was counted (say, the first job was lost with the broker's queue).
    sink.replies = [503, 503, 503]
    outcome = run(make_job(delivery_count=3, policy=GROUPED), session, clock, log=log)
    assert isinstance(outcome, RetryLater) and outcome.attempts == 2
    assert len(sink.received) == 2


def test_redeliveries_beyond_the_plan_still_try_then_give_up(
    sink: ScriptedSink, session: requests.Session, clock: Clock, log: MemoryLog
) -> None:
    # One group (all in-job); a crash-caused second delivery still tries the event once more.
    assert run(make_job(delivery_count=2), session, clock, log=log) == Delivered(204, 1)
    log.counts[7] = Progress(2, time.time() - 60)
    outcome = run(make_job(delivery_count=4), session, clock, log=log)
    assert isinstance(outcome, DeadLetter)
    assert "delivered 4 times" in outcome.reason
    assert outcome.attempts == 2
    assert len(sink.received) == 1


def test_retry_after_http_dates() -> None:
    assert delivery.parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert delivery.parse_retry_after("soon") is None
    assert delivery.parse_retry_after(None) is None


def test_an_answer_that_arrives_while_the_worker_stops_is_delivered(
    sink: ScriptedSink, session: requests.Session, clock: Clock, log: MemoryLog
) -> None:
    """The sink has the event: handing it back would deliver it twice."""
    sink.replies = [204]
    assert run(make_job(), session, clock, log=log, stopping=stops_after(1)) == Delivered(204, 1)


@pytest.mark.parametrize(
    ("looks", "counted"),
    [
        (1, []),  # stopping as the attempt fails: the shutdown may have cut it off, uncounted
        (3, [1]),  # stopping during the 1 s wait after a counted failure: the wait ends
    ],
)
def test_a_worker_that_stops_hands_back_an_undelivered_event(
    sink: ScriptedSink,
    session: requests.Session,
    clock: Clock,
    log: MemoryLog,
    looks: int,
    counted: list[int],
) -> None:
    sink.replies = [503, 204]
    with pytest.raises(Interrupted):
        run(make_job(), session, clock, log=log, stopping=stops_after(looks))
    assert len(sink.received) == 1 and log.writes == counted
    assert clock.total < 1


def test_each_attempt_says_what_kind_of_failure_it_was(
    sink: ScriptedSink, session: requests.Session, clock: Clock
) -> None:
    refused = requests.ConnectionError(
        urllib3.exceptions.MaxRetryError(
            None,  # type: ignore[arg-type]
            "/",
            urllib3.exceptions.NewConnectionError(None, "refused"),  # type: ignore[arg-type]
        )
    )
    refused.__context__ = ConnectionRefusedError(111, "Connection refused")
    sink.replies = [
        refused,
        requests.ConnectionError("name or service not known"),
        requests.exceptions.SSLError("certificate verify failed"),
        requests.ReadTimeout("slow"),
        503,
        204,
    ]
    attempts: list[Attempt] = []
    policy = replace(POLICY, retry=6, in_job_wait_max=100.0)
    assert run(make_job(policy=policy), session, clock, attempts=attempts) == Delivered(204, 6)
    assert [a.kind for a in attempts] == [
        "connection-refused",
        "connection-error",
        "tls",
        "timeout",
        "answered",
        "answered",
    ]
    assert [a.error != "" for a in attempts] == [True] * 5 + [False]
    assert all(a.started > 0 for a in attempts)


def test_a_refused_address_is_refused_by_policy() -> None:
    exc = SinkRefused("the egress policy refuses 169.254.169.254")
    assert delivery.failure_kind(exc, cut_off=False) == "refused-by-policy"


@pytest.mark.parametrize(
    ("stored_ago", "delivery_count", "ack_wait", "keepalives_sent"),
    [
        (1.0, 1, 30.0, 0),  # the ack wait (from the pull) outlasts the attempt (5 s) by far
        (11.0, 1, 30.0, 1),  # stored long enough ago that the attempt may end past half of it
        (1.0, 2, 30.0, 1),  # a redelivery: its ack wait began at the redelivery, unknown here
        (None, 1, 30.0, 1),  # no store time known
        (1.0, 1, 20.0, 1),  # half of it would not cover the ack's tries while NATS is away
    ],
)
def test_a_keepalive_starts_an_attempt_unless_the_ack_wait_surely_covers_it(
    session: requests.Session,
    clock: Clock,
    stored_ago: float | None,
    delivery_count: int,
    ack_wait: float,
    keepalives_sent: int,
) -> None:
    published = time.time() - stored_ago if stored_ago is not None else 0.0
    job = make_job(delivery_count, published=published, ack_wait=ack_wait)
    keepalives: list[int] = []
    assert run(job, session, clock, keepalives) == Delivered(204, 1)
    assert len(keepalives) == keepalives_sent
