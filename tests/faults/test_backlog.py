"""Backlog isolation: one dead sink never stops the others, and its backlog stays bounded.

Every event waits in the one shared stream until each subscription that wants it is done, so a
dead sink's events pile up there. Kyma lets them fill the stream, and then every publisher of
every type gets 507. Here the manager keeps each subscription's backlog under ``MAX_BACKLOG`` by
moving its oldest waiting events to the dead-letter stream.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.faults.harness import Load, dead_lettered, report
from tests.support.servers import NatsServer, RedisServer, wait_until
from tests.support.sink import RecordingSink, SinkServer
from tests.support.system import System

pytestmark = [pytest.mark.integration, pytest.mark.faults]

MAX_BACKLOG = 300
RATE = 150.0


@pytest.fixture
def dead_sink() -> Iterator[SinkServer]:
    server = SinkServer(RecordingSink(answer=lambda request: 503)).start()
    yield server
    server.stop()


def test_a_dead_sink_sheds_its_oldest_events_and_never_blocks_the_others(
    nats_server: NatsServer,
    redis_server: RedisServer,
    tmp_path: Path,
    sink_server: SinkServer,
    dead_sink: SinkServer,
    request: pytest.FixtureRequest,
) -> None:
    system = System(
        nats_server,
        redis_server,
        tmp_path,
        DELIVERY_ACK_WAIT="5s",
        MAX_BACKLOG=str(MAX_BACKLOG),
    ).start()
    request.addfinalizer(system.stop)
    system.subscribe(
        "healthy",
        {
            "sink": sink_server.url,
            "source": "faults",
            "types": ["order.created.v1"],
            "config": {"maxInFlightMessages": "20"},
        },
    )
    system.subscribe(
        "dead",
        {
            "sink": dead_sink.url,
            "source": "faults",
            "types": ["payment.failed.v1"],
            "config": {"maxInFlightMessages": "5"},
            # Long enough that no event runs out of attempts during the test: everything in
            # the dead-letter stream got there by shedding.
            "delivery": {"retry": 20, "backoffDelay": "PT1S"},
        },
    )
    dead_consumer = system.status("default", "dead")["status"]["backend"]["types"][0][  # type: ignore[index]
        "consumerName"
    ]

    healthy = Load(system.proxy_url, "healthy", rate=RATE).start()
    dead = Load(system.proxy_url, "dead", rate=RATE, event_type="payment.failed.v1").start()
    most_pending = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        most_pending = max(most_pending, _pending(system, dead_consumer))
        time.sleep(0.25)
    healthy.stop()
    dead.stop()

    wait_until(
        lambda: report(healthy, sink_server.sink).lost == 0, 60, "every healthy event delivered"
    )
    healthy_result = report(healthy, sink_server.sink)
    status = system.status("default", "dead")
    assert status is not None
    backlog = next(c for c in status["status"]["conditions"] if c["type"] == "Backlog within limit")
    shed_before_recovery = dead_lettered(nats_server.url)

    # The sink comes back: what is still waiting is delivered, nothing is lost.
    dead_sink.sink.answer = lambda request: 204
    wait_until(
        lambda: report(dead, dead_sink.sink, dead_lettered(nats_server.url)).lost == 0,
        90,
        "every event of the dead sink delivered or dead-lettered",
    )
    shed = dead_lettered(nats_server.url)
    dead_result = report(dead, dead_sink.sink, shed)
    print(healthy_result.line("backlog-isolation, healthy subscription"))
    print(
        dead_result.line(
            "backlog-isolation, dead subscription",
            most_pending_seen=str(most_pending),
            shed_while_dead=str(len(shed_before_recovery)),
        )
    )

    assert healthy_result.failures == {}, "publishing a healthy type must never fail"
    assert healthy_result.lost == 0
    assert dead.failures == {}, "the dead sink's own publishers are not refused either"
    assert dead_result.lost == 0
    # A check runs every second, so the backlog may exceed the limit by a second of publishing.
    assert most_pending <= MAX_BACKLOG + 2 * RATE
    assert len(shed_before_recovery) >= dead_result.accepted - MAX_BACKLOG - 2 * RATE
    assert backlog["status"] == "False"
    assert "MAX_BACKLOG=300" in backlog["message"]
    shed_metric = re.search(
        rf'eventing_manager_backlog_dead_lettered_total{{consumer_name="{dead_consumer}"}} (\S+)',
        requests.get(f"{system.manager_url}/metrics", timeout=5).text,
    )
    assert shed_metric is not None
    # Shedding may go on for a moment after the sink recovers; the metric counts all of it.
    assert float(shed_metric[1]) == len(shed)


def _pending(system: System, consumer: str) -> int:
    found = re.search(
        rf'eventing_manager_consumer_pending{{consumer_name="{consumer}"}} (\S+)',
        requests.get(f"{system.manager_url}/metrics", timeout=5).text,
    )
    return int(float(found[1])) if found else 0
