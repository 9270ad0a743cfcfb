"""Issue 15's journey "status and metrics change as the sink fails and recovers", every process
real: proxy, manager and a worker as subprocesses, a real nats-server, Redis and sinks.

The workers' metrics come from real deliveries. ``status.delivery`` comes from the delivery
ledger, whose records the workers write (the ledger slice of issue 15); here the test writes
them in the workers' place, in the fixed format (:meth:`Record.message`), for a subscription
no event is published to, so the manager's follower is what is tested.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path
from typing import Any

import nats
import pytest
import requests
from werkzeug.wrappers import Request

from eventing.delivery.ledger import AttemptRecord, Record
from eventing.nats import streams
from eventing.settings import Settings
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


def write_ledger(nats_url: str, settings: Settings, records: list[Record]) -> None:
    """Store ``records`` in the ledger stream, as the workers do (creating it, as they do)."""

    async def write() -> None:
        connection = await nats.connect(nats_url)
        try:
            js = connection.jetstream()
            await js.add_stream(streams.ledger_config(settings.stream))
            for record in records:
                message = record.message()
                await js.publish(message.subject, message.payload)
        finally:
            await connection.close()

    asyncio.run(write())


def attempt_record(event: str, outcome: str, status: int | None, kind: str = "answered") -> Record:
    now = time.time()
    return Record(
        subscription="default/ledger-fed",
        source="shop",
        id=event,
        type=TYPE,
        sequence=1,
        origin="live",
        outcome=outcome,
        time=now,
        attempt=AttemptRecord(1, now, 0.01, kind, status, "" if status else "timed out"),
        reason="" if status == 204 else f"sink answered {status}" if status else "timed out",
    )


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
    settings = Settings.from_environ({"NATS_URL": nats_server.url})
    write_ledger(nats_server.url, settings, [])  # the stream exists before the manager reads it
    system = System(nats_server, redis_server, tmp_path).start()
    try:
        system.subscribe("flaky", spec(flaky.url, retry=20, backoffDelay="PT0.2S"))
        system.subscribe("slow", spec(slow.url, retry=0, timeout="PT0.2S"))
        system.subscribe("ledger-fed", {**spec(flaky.url), "types": ["never.published.v1"]})

        # The sink fails: the attempts count as 503, the timeouts by their kind, not as 500.
        assert system.publish_binary("evt-1", "shop", TYPE).status_code == 204
        wait_until(lambda: len(flaky.sink.received(503)) >= 2, 20, "failed attempts")
        wait_until(lambda: len(slow.sink.received(None)) >= 1, 20, "an attempt at the slow sink")
        records = [attempt_record(f"e{n}", "retrying", 503) for n in range(3)]
        records.append(attempt_record("e3", "retrying", None, "timeout"))
        write_ledger(nats_server.url, settings, records)

        def delivery() -> dict[str, Any]:
            item = system.status("default", "ledger-fed") or {}
            return dict(item.get("status", {}).get("delivery", {}))

        def condition() -> str:
            item = system.status("default", "ledger-fed") or {"status": {"conditions": []}}
            found = [c for c in item["status"]["conditions"] if c["type"] == "Sink delivering"]
            return str(found[0]["status"]) if found else ""

        wait_until(lambda: delivery().get("retrying") == 4, 20, f"4 in retry: {delivery()}")
        shown = delivery()
        assert condition() == "False"
        assert shown["failingSince"] is not None
        assert shown["lastError"]["status"] is None
        assert shown["lastError"]["reason"] == "timed out"
        manager = requests.get(f"{system.manager_url}/metrics", timeout=5).text
        in_retry = total(manager, "eventing_manager_in_retry", subscription_name="ledger-fed")
        assert in_retry == 4

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
        write_ledger(
            nats_server.url,
            settings,
            [attempt_record(f"e{n}", "delivered", 204) for n in range(4)],
        )
        wait_until(lambda: delivery().get("delivered") == 4, 20, f"4 delivered: {delivery()}")
        shown = delivery()
        assert condition() == "True"
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
