"""Sinks that fail while everything else runs: one down for a minute, one slower than the ack wait.

Publishing goes on at 200 events/s throughout. JetStream keeps the backlog, the consumer's
``max_ack_pending`` (``maxInFlightMessages``) bounds what is out at the sink, and once the sink
is well again every accepted event reaches it.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import pytest
from werkzeug.wrappers import Request

from eventing.delivery import retries
from testing.counting import Load, settle
from testing.servers import NatsServer
from testing.sink import RecordingSink, SinkServer
from tests.faults.conftest import SUBSCRIPTION, StartSystem

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RATE = 200.0
BASE_ACK_WAIT = 5.0  #: DELIVERY_ACK_WAIT of every fault-test system
DOWN_FOR = 60.0  #: seconds the sink refuses connections
SLOW_FOR = 20.0  #: seconds the slow sink takes ``answer_after`` per request

#: retry 10, exponential from 1 s, every wait capped at DELIVERY_BACKOFF_MAX = 10 s: attempts at
#: 0, 1, 3, 7, 15, 25, … 75 s, all in one job (no wait exceeds DELIVERY_IN_JOB_WAIT_MAX, 15 s).
PATIENT = retries.DeliveryPolicy(
    retry=10,
    backoff_policy="exponential",
    backoff_delay=1.0,
    backoff_max=10.0,
    timeout=1.0,
    retry_after_max=300.0,
    in_job_wait_max=15.0,
)


def test_sink_down_for_a_minute_then_back(
    nats_server: NatsServer, start_system: StartSystem, sink_server: SinkServer
) -> None:
    """A sink refusing connections for 60 s costs no event, not even a dead letter.

    The retry plan outlasts the outage even for an event first tried the moment the sink went
    away, and the 10 s cap keeps the next attempt at most 11 s after the sink is back.
    """
    last_attempt = retries.schedule(PATIENT)[-1][2] * (1 - retries.JITTER)
    assert last_attempt > DOWN_FOR + 5, "the plan would dead-letter events during the outage"
    system = start_system(
        nats_server,
        subscription={
            "delivery": {
                "retry": PATIENT.retry,
                "backoffDelay": f"PT{PATIENT.backoff_delay:g}S",
                "timeout": f"PT{PATIENT.timeout:g}S",
            }
        },
        DELIVERY_BACKOFF_MAX=f"{PATIENT.backoff_max:g}s",
        # An event in flight holds a worker thread through its in-job waits: as many threads as
        # maxInFlightMessages, or queued jobs outlive their ack wait (the README's known limit).
        WORKER_THREADS=SUBSCRIPTION["config"]["maxInFlightMessages"],
    )
    sink = sink_server.sink
    load = Load(system.proxy_url, "sink-down", rate=RATE).start()
    time.sleep(5)
    sink_server.stop()
    time.sleep(DOWN_FOR)
    sink_server.restart()
    back = time.monotonic()
    time.sleep(5)
    load.stop()
    result = settle(load, sink, system.nats_url, timeout=240)
    arrivals = _first_arrivals(sink, load)
    resumed = min(at for at in arrivals if at >= back) - back
    recovery = max(arrivals) - back
    print(
        result.line(
            "sink-down-60s", deliveries_resumed_after=f"{resumed:.1f}s", recovery=f"{recovery:.1f}s"
        )
    )
    assert result.accepted > RATE * DOWN_FOR
    assert result.lost == 0
    assert result.dead_lettered == 0


@dataclass(frozen=True)
class Slow:
    """A sink that takes ``answer_after`` s per request, and the configuration it meets."""

    name: str
    answer_after: float
    timeout: float  #: the subscription's request timeout, longer than the answer
    max_in_flight: int
    worker_threads: int

    @property
    def ack_wait(self) -> float:
        """The consumer's ack wait: at least DELIVERY_ACK_WAIT, raised to 2 * timeout + 5 s."""
        return max(BASE_ACK_WAIT, 2 * self.timeout + 5)

    def duplicate_bound(self, slow_for: float) -> int:
        """The most duplicates the sink may see.

        The sink always answers 2xx within the timeout, so no job retries, and a duplicate needs
        an ack wait that expires. A job sends a keepalive as it starts, and one request lasts
        less than the ack wait, so a message expires only while its job waits in the broker
        longer than the ack wait. With a thread for every event in flight no job waits: none.
        Otherwise each of the at most ``max_in_flight`` pending messages expires at most once per
        ack wait, while the sink is slow and one ack wait after.
        """
        if self.worker_threads >= self.max_in_flight:
            return 0
        return math.floor(self.max_in_flight * (slow_for / self.ack_wait + 2))


@pytest.mark.parametrize(
    "slow",
    [
        # Slower than DELIVERY_ACK_WAIT, but the ack wait is raised to 25 s and every event in
        # flight has a thread: nothing is delivered twice.
        Slow("slow-sink-6s-enough-threads", 6.0, 10.0, max_in_flight=10, worker_threads=16),
        # 100 in flight, 8 threads: jobs queue (100 - 8) / 8 * 3 s = 34 s, past the 17 s ack
        # wait, so JetStream redelivers messages whose jobs still wait.
        Slow("slow-sink-3s-queued-past-ack-wait", 3.0, 6.0, max_in_flight=100, worker_threads=8),
    ],
    ids=lambda slow: slow.name,
)
def test_a_slow_sink_gets_at_most_max_in_flight_and_bounded_duplicates(
    nats_server: NatsServer, start_system: StartSystem, sink_server: SinkServer, slow: Slow
) -> None:
    """A sink turns slow for a while: JetStream holds the backlog, the sink never has more
    than maxInFlightMessages requests open, and duplicates stay within the bound."""
    sink = sink_server.sink
    slowing = threading.Event()

    def answer(request: Request) -> int:
        if slowing.is_set():
            time.sleep(slow.answer_after)
        return 204

    sink.answer = answer
    system = start_system(
        nats_server,
        subscription={
            "config": {"maxInFlightMessages": str(slow.max_in_flight)},
            "delivery": {"timeout": f"PT{slow.timeout:g}S", "backoffDelay": "PT0.2S", "retry": 8},
        },
        WORKER_THREADS=str(slow.worker_threads),
    )
    load = Load(system.proxy_url, "slow-sink", rate=RATE).start()
    time.sleep(5)
    slowing.set()
    time.sleep(SLOW_FOR)
    slowing.clear()
    time.sleep(5)
    load.stop()
    result = settle(load, sink, system.nats_url, timeout=180)
    bound = slow.duplicate_bound(SLOW_FOR)
    print(
        result.line(
            slow.name,
            ack_wait=f"{slow.ack_wait:g}s",
            duplicate_bound=str(bound),
            most_in_flight=f"{sink.most_in_flight} (maxInFlightMessages {slow.max_in_flight})",
        )
    )
    assert result.lost == 0
    assert result.dead_lettered == 0
    assert result.duplicates <= bound
    assert sink.most_in_flight <= slow.max_in_flight
    # The slow phase filled every slot there was: threads or maxInFlightMessages, the fewer.
    assert sink.most_in_flight == min(slow.worker_threads, slow.max_in_flight)


def _first_arrivals(sink: RecordingSink, load: Load) -> list[float]:
    """When each of ``load``'s accepted events first arrived at the sink."""
    first: dict[str, float] = {}
    for delivery in sink.received():
        first[delivery.event_id] = min(first.get(delivery.event_id, math.inf), delivery.at)
    _, accepted, _ = load.snapshot()
    return [first[event_id] for event_id in accepted]
