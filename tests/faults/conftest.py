"""Whole systems tuned for fault tests: short ack waits, so lost jobs come back within seconds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from testing.cluster import NatsCluster
from testing.counting import LINES
from testing.servers import NatsServer, RedisServer
from testing.sink import SinkServer
from testing.system import System
from tests.conftest import stop_showing_logs

pytestmark = [pytest.mark.integration, pytest.mark.faults]

#: The subscription every scenario delivers through (to ``sink_server``), unless it overrides
#: fields: quick retries, and a 1 s timeout so the consumer's ack wait stays at 7 s.
SUBSCRIPTION: dict[str, Any] = {
    "source": "faults",
    "types": ["order.created.v1"],
    "config": {"maxInFlightMessages": "20"},
    "delivery": {"timeout": "PT1S", "backoffDelay": "PT0.2S", "retry": 8},
}


class StartSystem(Protocol):
    def __call__(
        self,
        nats: NatsServer | NatsCluster,
        *,
        subscription: dict[str, Any] | None = ...,
        **env: str,
    ) -> System: ...


@pytest.fixture
def start_system(
    redis_server: RedisServer,
    tmp_path: Path,
    sink_server: SinkServer,
    request: pytest.FixtureRequest,
) -> Iterator[StartSystem]:
    """Start the system on the given NATS with ``env`` overrides, subscribed to ``sink_server``
    with :data:`SUBSCRIPTION` updated by ``subscription``; stopped after the test, with its logs
    printed if the test failed. Request the NATS fixture first, so it outlives the system."""
    systems: list[System] = []

    def start(
        nats: NatsServer | NatsCluster, *, subscription: dict[str, Any] | None = None, **env: str
    ) -> System:
        system = System(nats, redis_server, tmp_path, **{"DELIVERY_ACK_WAIT": "5s", **env})
        systems.append(system)
        system.start()
        system.subscribe(
            "faults", {"sink": sink_server.url, **SUBSCRIPTION, **(subscription or {})}
        )
        return system

    yield start
    stop_showing_logs(request, *systems)


@pytest.fixture
def faulty(nats_server: NatsServer, start_system: StartSystem) -> System:
    """The system on one nats-server, subscribed with :data:`SUBSCRIPTION`."""
    return start_system(nats_server)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every scenario's count line, also when output was captured (as in CI)."""
    if LINES:
        terminalreporter.section("fault scenarios")
        for line in LINES:
            terminalreporter.write_line(line)
