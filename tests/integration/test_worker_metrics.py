"""Several eventing-worker processes on one host, as ``honcho start -c worker=3`` runs them:
each serves the metrics of its own deliveries, so none goes uncounted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from testing.servers import NatsServer, RedisServer, wait_until
from testing.sink import SinkServer
from testing.system import System
from tests.conftest import stop_showing_logs

pytestmark = pytest.mark.integration

EVENTS = 60
_DELIVERED = re.compile(r"delivered default/orders seq \d+ to \S+: 204")
_COUNTED = re.compile(
    r'^eventing_ec_nats_delivery_per_subscription_total\{[^}]*response_code="204"[^}]*\} (\S+)$',
    re.MULTILINE,
)


def test_every_worker_on_a_host_serves_complete_metrics(
    nats_server: NatsServer,
    redis_server: RedisServer,
    sink_server: SinkServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    # One worker process each, 2 threads: the jobs spread over the three.
    # Every delivery logged (a DEBUG line each; INFO sums them).
    system = System(
        nats_server, redis_server, tmp_path, WORKER_THREADS="2", LOG_LEVEL="debug"
    ).start(workers=3)
    try:
        urls = [system.metrics_url(worker) for worker in system.workers]
        assert len(set(urls)) == 3, urls  # all started with the same WORKER_METRICS_PORT
        system.subscribe(
            "orders", {"sink": sink_server.url, "source": "shop", "types": ["order.created.v1"]}
        )
        for n in range(EVENTS):
            assert system.publish_binary(f"counted-{n}", "shop", "order.created.v1").status_code
        wait_until(lambda: len(set(sink_server.sink.ids())) == EVENTS, 30, f"{EVENTS} deliveries")

        def counted() -> list[float]:
            return [
                sum(float(v) for v in _COUNTED.findall(system.worker_metrics(worker)))
                for worker in system.workers
            ]

        def logged() -> list[float]:
            # Read again each time: a worker logs a delivery once its ack is confirmed, after the
            # sink has it and after the attempt was counted.
            return [float(len(_DELIVERED.findall(worker.log()))) for worker in system.workers]

        wait_until(
            lambda: counted() == logged(), 10, f"metrics {counted()} = deliveries {logged()}"
        )
        assert sum(logged()) == len(sink_server.sink.received())
    finally:
        stop_showing_logs(request, system)
