"""An event whose delivery is interrupted mid-plan still gets exactly the attempts its policy
promises: the count of failed attempts lives in JetStream, not in the worker that made them."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testing.servers import NatsServer, RedisServer, wait_until
from testing.sink import SinkServer
from testing.system import Process, System
from tests.conftest import stop_showing_logs
from tests.integration.conftest import read_stream

pytestmark = pytest.mark.integration

# Delays 2, 4, 6 s; waits over 3 s go back to JetStream: attempts 1-2 | 3 | 4, three deliveries.
POLICY = {"retry": 3, "backoffPolicy": "linear", "backoffDelay": "PT2S", "timeout": "PT1S"}


@pytest.fixture
def start_system(
    nats_server: NatsServer,
    redis_server: RedisServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., System]]:
    """Start the system with ``workers`` workers and ``env``; stopped after the test, with its
    logs printed if the test failed."""
    systems: list[System] = []

    def start(workers: int, **env: str) -> System:
        system = System(nats_server, redis_server, tmp_path, DELIVERY_ACK_WAIT="5s", **env)
        systems.append(system)
        return system.start(workers=workers)

    yield start
    stop_showing_logs(request, *systems)


@pytest.fixture
def two_workers(start_system: Callable[..., System]) -> System:
    return start_system(2, DELIVERY_IN_JOB_WAIT_MAX="3s")


def subscribe(system: System, sink_server: SinkServer, delivery: dict[str, object]) -> None:
    system.subscribe(
        "interrupted",
        {
            "sink": sink_server.url,
            "source": "shop",
            "types": ["order.created.v1"],
            "delivery": delivery,
        },
    )


def busy_worker(system: System) -> Process:
    """The worker whose job is asleep between the first and second attempt."""
    wait_until(
        lambda: any("retrying default/interrupted" in w.log() for w in system.workers),
        10,
        "a job waiting to retry",
    )
    [busy] = [w for w in system.workers if "retrying default/interrupted" in w.log()]
    return busy


@pytest.mark.parametrize("interruption", ["sigterm", "sigkill"])
def test_an_interrupted_event_gets_exactly_its_attempts(
    two_workers: System, sink_server: SinkServer, nats_server: NatsServer, interruption: str
) -> None:
    sink = sink_server.sink
    sink.answer = lambda request: 503
    subscribe(two_workers, sink_server, POLICY)
    assert two_workers.publish_binary("stubborn", "shop", "order.created.v1").status_code == 204
    busy = busy_worker(two_workers)
    if interruption == "sigterm":
        busy.stop()  # hands the event back: a JetStream delivery without its second attempt
        assert "handed back default/interrupted" in busy.log()
    else:
        busy.kill()  # comes back after the ack wait (7 s): likewise a delivery cut short

    wait_until(lambda: len(read_stream(nats_server, "sap-dlq")) == 1, 60, "the dead letter")
    [letter] = read_stream(nats_server, "sap-dlq")
    assert letter.headers["Eventing-Dead-Letter-Attempts"] == "4"
    assert letter.headers["Eventing-Dead-Letter-Status"] == "503"
    assert json.loads(letter.payload)["id"] == "stubborn"
    time.sleep(1)  # a wrongly repeated attempt would follow the dead letter at once
    times = [delivery.at for delivery in sink.received(None)]
    assert len(times) == 4, "1 + retry 3 attempts, no more and no fewer"
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # The second attempt waits out its delay even though the first worker's job was cut short.
    assert gaps[0] >= 2 * 0.9 - 0.1, gaps
    assert gaps[1] >= 4 * 0.9 - 0.1 and gaps[2] >= 6 * 0.9 - 0.1, gaps
    # The count is gone once the event is settled.
    wait_until(
        lambda: read_stream(nats_server, "KV_eventing-attempts") == [], 5, "the count deleted"
    )


def test_a_stopping_worker_hands_an_event_back_once(
    start_system: Callable[..., System], sink_server: SinkServer, nats_server: NatsServer
) -> None:
    """A worker that began stopping takes no more jobs: the event it hands back comes back to
    the broker at once, and it must not take it again (each hand-back is a JetStream delivery;
    a loop of them reached the delivery limit and dead-lettered events the sink would take)."""
    # One group of attempts and one delivery to spare: the hand-back is the spare.
    system = start_system(1, DELIVERY_EXTRA_DELIVERIES="1")
    sink = sink_server.sink
    sink.answer = lambda request: 503
    subscribe(system, sink_server, {"retry": 1, "backoffDelay": "PT10S", "timeout": "PT1S"})
    assert system.publish_binary("handed", "shop", "order.created.v1").status_code == 204
    [stopping] = system.workers
    wait_until(lambda: "retrying default/interrupted" in stopping.log(), 10, "a waiting job")
    sink.answer = lambda request: 204
    stopping.stop()
    assert stopping.log().count("handed back default/interrupted") == 1, stopping.log()
    system.add_worker()
    wait_until(lambda: sink.ids(204) == ["handed"], 30, f"the event\n{system.logs()}")
    time.sleep(1)  # a dead letter would follow the delivery of a duplicate job at once
    assert read_stream(nats_server, "sap-dlq") == []
