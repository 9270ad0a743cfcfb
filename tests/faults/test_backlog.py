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

import pytest
import requests

from testing.counting import Load, dead_lettered, report
from testing.servers import NatsServer, wait_until
from testing.sink import RecordingSink, SinkServer
from testing.system import System
from tests.faults.conftest import StartSystem

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# Small enough that the dead subscription sheds within seconds, large enough (about 7 s of
# publishing) that the healthy one, on a busy 2-core machine, never gets near it.
MAX_BACKLOG = 1000
RATE = 150.0


@pytest.fixture
def dead_sink() -> Iterator[SinkServer]:
    server = SinkServer(RecordingSink(answer=lambda request: 503)).start()
    yield server
    server.stop()


def test_a_dead_sink_sheds_its_oldest_events_and_never_blocks_the_others(
    nats_server: NatsServer,
    start_system: StartSystem,
    sink_server: SinkServer,
    dead_sink: SinkServer,
) -> None:
    # The healthy subscription is the scenarios' usual one, to sink_server.
    # Threads for the dead sink's 5 events in flight, which wait between retries, and the rest.
    system = start_system(nats_server, MAX_BACKLOG=str(MAX_BACKLOG), WORKER_THREADS="16")
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
    dead_labels = 'subscription_name="dead",subscription_namespace="default"'  # sorted

    healthy = Load(system.proxy_url, "healthy", rate=RATE).start()
    dead = Load(system.proxy_url, "dead", rate=RATE, event_type="payment.failed.v1").start()
    most_pending = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        most_pending = max(most_pending, _pending(system, dead_labels))
        time.sleep(0.25)
    healthy.stop()
    dead.stop()

    wait_until(
        lambda: report(healthy, sink_server.sink, dead_lettered(nats_server.url)).lost == 0,
        60,
        "every healthy event delivered",
    )
    healthy_result = report(healthy, sink_server.sink, dead_lettered(nats_server.url))
    # Shedding runs once a second and, on a busy machine, a round may take longer: the backlog
    # gets back under the limit, however long that takes (its peak is reported, not judged).
    wait_until(
        lambda: _pending(system, dead_labels) <= MAX_BACKLOG,
        60,
        f"the dead subscription's backlog under MAX_BACKLOG\n{system.logs()}",
    )
    status = system.status("default", "dead")
    assert status is not None
    backlog = next(c for c in status["status"]["conditions"] if c["type"] == "Backlog within limit")
    shed_before_recovery = dead_lettered(nats_server.url)
    accepted_dead = len(dead.snapshot()[1])

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
    assert healthy_result.dead_lettered == 0, "the healthy subscription kept up: nothing shed"
    assert dead.failures == {}, "the dead sink's own publishers are not refused either"
    assert dead_result.lost == 0
    # Kept: at most MAX_BACKLOG waiting, 5 in flight (maxInFlightMessages), and at most one
    # fetch (5) that a pull request of the delivery loop, expiring just then, took while the
    # limit was raised for shedding. The rest was shed.
    assert len(shed_before_recovery) >= accepted_dead - MAX_BACKLOG - 2 * 5
    assert backlog["status"] == "False"
    assert f"MAX_BACKLOG={MAX_BACKLOG}" in backlog["message"]
    assert dead_sink.sink.most_in_flight <= 5, "shed events never reach the sink"
    shed_metric = re.search(
        rf"eventing_manager_backlog_dead_lettered_total{{[^}}]*{dead_labels}}} (\S+)",
        requests.get(f"{system.manager_url}/metrics", timeout=5).text,
    )
    assert shed_metric is not None
    # Shedding may go on for a moment after the sink recovers; the metric counts all of it.
    assert float(shed_metric[1]) == len(shed)
    # So does the status, from the ledger's dead-lettered records of the shed events.
    wait_until(
        lambda: _delivery(system, "dead").get("deadLettered") == len(shed),
        20,
        f"status.delivery to count {len(shed)} shed: {_delivery(system, 'dead')}",
    )


def _delivery(system: System, name: str) -> dict[str, int]:
    item = system.status("default", name) or {}
    return dict(item.get("status", {}).get("delivery", {}))


def _pending(system: System, subscription: str) -> int:
    """The backlog of ``subscription``'s one type (its metric's labels, as Prometheus shows
    them)."""
    found = re.search(
        rf"eventing_manager_consumer_pending{{[^}}]*{subscription}}} (\S+)",
        requests.get(f"{system.manager_url}/metrics", timeout=5).text,
    )
    return int(float(found[1])) if found else 0
