"""Issue 15's journey "status and metrics change as the sink fails and recovers", every process
real: proxy, manager and a worker as subprocesses, a real nats-server, Redis and sinks.

The workers' metrics come from real deliveries, and so does ``status.delivery``: the workers
write the delivery ledger, the manager follows it.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.wrappers import Request

from testing.servers import NatsServer, RedisServer, wait_until
from testing.sink import RecordingSink, SinkServer
from testing.system import System
from tests.conftest import stop_showing_logs

pytestmark = pytest.mark.integration

TYPE = "order.created.v1"


def spec(sink: str, **delivery: object) -> dict[str, Any]:
    return {"sink": sink, "source": "shop", "types": [TYPE], "delivery": delivery}


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``name`` in Prometheus text: (labels, value)."""
    return [
        (dict(re.findall(r'(\w+)="([^"]*)"', labels)), float(value))
        for labels, value in re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE)
    ]


def total(text: str, name: str, **labels: str) -> float:
    return sum(v for found, v in samples(text, name) if labels.items() <= found.items())


def test_status_and_metrics_change_as_the_sink_fails_and_recovers(
    nats_server: NatsServer,
    redis_server: RedisServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    failing = threading.Event()
    failing.set()
    flaky = SinkServer(RecordingSink(lambda r: 503 if failing.is_set() else 204)).start()

    def never_in_time(request: Request) -> int:
        time.sleep(0.5)  # past the subscription's 0.2 s timeout
        return 204

    slow = SinkServer(RecordingSink(never_in_time)).start()
    system = System(nats_server, redis_server, tmp_path).start()
    try:
        system.subscribe("flaky", spec(flaky.url, retry=20, backoffDelay="PT0.2S"))
        system.subscribe("slow", spec(slow.url, retry=0, timeout="PT0.2S"))

        def delivery(name: str) -> dict[str, Any]:
            item = system.status("default", name) or {}
            return dict(item.get("status", {}).get("delivery", {}))

        def condition(name: str) -> str:
            item = system.status("default", name) or {"status": {"conditions": []}}
            found = [c for c in item["status"]["conditions"] if c["type"] == "Sink delivering"]
            return str(found[0]["status"]) if found else ""

        # The sink fails: the attempts count as 503, the timeouts by their kind, not as 500.
        assert system.publish_binary("evt-1", "shop", TYPE).status_code == 204
        wait_until(lambda: len(flaky.sink.received(503)) >= 3, 20, "failed attempts")
        wait_until(lambda: condition("flaky") == "False", 20, f"failing: {delivery('flaky')}")
        shown = delivery("flaky")
        assert shown["retrying"] == 1 and shown["failingSince"] is not None
        assert (shown["lastError"]["status"], shown["lastError"]["reason"]) == (
            503,
            "sink answered 503",
        )
        manager = requests.get(f"{system.manager_url}/metrics", timeout=5).text
        assert total(manager, "eventing_manager_in_retry", subscription_name="flaky") == 1
        wait_until(lambda: delivery("slow").get("deadLettered") == 1, 20, f"{delivery('slow')}")
        assert delivery("slow")["lastError"]["status"] is None  # no answer within its timeout

        def worker(name: str, **labels: str) -> float:
            return total(system.worker_metrics(), name, **labels)

        wait_until(
            lambda: worker("eventing_delivery_dead_lettered_total", subscription_name="slow") == 1,
            20,
            f"the slow sink's event dead-lettered\n{system.logs()}",
        )
        timeouts = worker("eventing_delivery_attempts_total", subscription_name="slow")
        assert timeouts == worker(
            "eventing_delivery_attempts_total", subscription_name="slow", kind="timeout"
        )
        assert (
            worker(
                "eventing_ec_nats_delivery_per_subscription_total",
                subscription_name="slow",
                response_code="",
            )
            == timeouts
        )
        assert not worker("eventing_ec_nats_delivery_per_subscription_total", response_code="500")

        # The sink recovers: the event is delivered, the condition turns True again.
        failing.clear()
        wait_until(lambda: "evt-1" in flaky.sink.ids(204), 20, "the flaky sink's delivery")
        wait_until(lambda: delivery("flaky").get("delivered") == 1, 20, f"{delivery('flaky')}")
        shown = delivery("flaky")
        assert condition("flaky") == "True"
        assert (shown["retrying"], shown["failingSince"]) == (0, None)
        wait_until(
            lambda: (
                worker("eventing_delivery_latency_seconds_count", subscription_name="flaky") == 1
            ),
            10,
            "the flaky sink's delivery latency observed",
        )
        attempts = samples(system.worker_metrics(), "eventing_delivery_attempts_total")
        assert {labels["kind"] for labels, _ in attempts} == {"answered", "timeout"}
        assert all("consumer_name" not in labels for labels, _ in attempts)
    finally:
        stop_showing_logs(request, system)
        flaky.stop()
        slow.stop()
