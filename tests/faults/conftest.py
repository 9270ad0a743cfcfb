"""A whole system tuned for fault tests: short ack waits, so lost jobs come back within seconds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import NatsServer, RedisServer
from tests.support.sink import SinkServer
from tests.support.system import System

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@pytest.fixture
def faulty(
    nats_server: NatsServer,
    redis_server: RedisServer,
    tmp_path: Path,
    sink_server: SinkServer,
    request: pytest.FixtureRequest,
) -> Iterator[System]:
    system = System(nats_server, redis_server, tmp_path, DELIVERY_ACK_WAIT="5s").start()
    system.subscribe(
        "faults",
        {
            "sink": sink_server.url,
            "source": "faults",
            "types": ["order.created.v1"],
            "config": {"maxInFlightMessages": "20"},
            "delivery": {"timeout": "PT1S", "backoffDelay": "PT0.2S", "retry": 8},
        },
    )
    yield system
    system.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(system.logs())
