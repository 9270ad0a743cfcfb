"""Nothing accepted is lost when processes crash, or when the broker loses every job.

Each scenario publishes continuously, breaks something in the middle, repairs it, and then
counts: every event the proxy accepted must reach the sink or the dead-letter stream (duplicates
are allowed, losses not).
"""

from __future__ import annotations

import re
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from testing.counting import Load, settle
from testing.servers import NatsServer, RedisServer, wait_until
from testing.sink import SinkServer
from testing.system import System
from tests.faults.conftest import StartSystem

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RATE = 200.0
_BATCH = re.compile(r"delivering (\d+) events of default/faults in one job")


def run_scenario(
    name: str, system: System, sink_server: SinkServer, fault: Callable[[], None]
) -> None:
    load = Load(system.proxy_url, name, rate=RATE).start()
    time.sleep(5)
    fault()
    time.sleep(5)
    load.stop()
    result = settle(load, sink_server.sink, system.nats_url)
    print(result.line(name))
    assert result.accepted > RATE * 5
    assert result.lost == 0
    assert result.dead_lettered == 0  # the sink never failed: every event must reach it


def kill_worker(system: System) -> Callable[[], None]:
    """The fault: the system's first worker killed, and started again 3 s later."""

    def kill() -> None:
        worker = system.workers[0]
        worker.kill()
        time.sleep(3)
        worker.start()

    return kill


def test_worker_killed_and_restarted(faulty: System, sink_server: SinkServer) -> None:
    run_scenario("worker-kill", faulty, sink_server, kill_worker(faulty))


def test_worker_killed_while_delivering_batches_to_a_sink_failing_some_of_them(
    nats_server: NatsServer, start_system: StartSystem, sink_server: SinkServer
) -> None:
    """Jobs of up to 20 events (a backlog forms while the worker is down: the redeliveries
    after the ack wait come in big fetches), and the sink fails the first attempt of one event
    in seven: each is retried on its own, no event of a batch is left behind."""
    failed_once: set[str] = set()
    lock = threading.Lock()

    def answer(request: Any) -> int:
        event_id = request.headers.get("ce-id", "")
        with lock:
            if zlib.crc32(event_id.encode()) % 7 or event_id in failed_once:
                return 204
            failed_once.add(event_id)
            return 503

    sink_server.sink.answer = answer
    system = start_system(
        nats_server,
        subscription={"config": {"maxInFlightMessages": "200"}},
        DELIVERY_BATCH_SPREAD="10",
        LOG_LEVEL="debug",
    )

    run_scenario("worker-kill-batches", system, sink_server, kill_worker(system))
    batches = [int(n) for n in _BATCH.findall(system.workers[0].log())]
    assert batches and max(batches) > 1, "no job carried several events: the test proves nothing"
    assert failed_once  # some events of the batches failed first


def test_manager_killed_and_restarted(faulty: System, sink_server: SinkServer) -> None:
    def kill_manager() -> None:
        faulty.manager.kill()
        time.sleep(3)
        faulty.manager.start()

    run_scenario("manager-kill", faulty, sink_server, kill_manager)


def test_redis_restarted_empty(
    faulty: System, sink_server: SinkServer, redis_server: RedisServer
) -> None:
    def wipe_redis() -> None:
        redis_server.kill()
        redis_server.wipe()
        time.sleep(2)
        redis_server.start()

    run_scenario("redis-wipe", faulty, sink_server, wipe_redis)


def test_nats_killed_and_restarted_on_its_store(
    faulty: System, sink_server: SinkServer, nats_server: NatsServer
) -> None:
    def kill_nats() -> None:
        nats_server.kill()
        time.sleep(3)
        nats_server.start()

    run_scenario("nats-kill", faulty, sink_server, kill_nats)


def test_proxy_killed_and_restarted(faulty: System, sink_server: SinkServer) -> None:
    def kill_proxy() -> None:
        faulty.proxy.kill()
        time.sleep(2)
        faulty.proxy.start()

    run_scenario("proxy-kill", faulty, sink_server, kill_proxy)


def test_sigterm_stops_a_busy_worker_within_five_seconds(
    faulty: System, sink_server: SinkServer
) -> None:
    """Jobs waiting between retries hand their events back, so the worker exits before honcho
    would kill it, and another worker delivers them."""
    sink = sink_server.sink
    sink.answer = lambda request: 503
    load = Load(faulty.proxy_url, "sigterm", rate=50).start()
    wait_until(lambda: len(sink.received(503)) > 20, 20, "failing deliveries")
    replacement = faulty.add_worker()
    wait_until(lambda: "ready for action" in replacement.log(), 30, "a second worker")
    busy = faulty.workers[0]
    # The sink recovers first: a handed-back event's redelivery counts as a JetStream delivery
    # and runs the next group of its retry plan, so against a still-failing sink it could reach
    # its last group early and be dead-lettered (a known limit, see the README).
    sink.answer = lambda request: 204
    started = time.monotonic()
    busy.stop(timeout=30)
    stopped_after = time.monotonic() - started
    load.stop()
    result = settle(load, sink, faulty.nats_url)
    print(result.line("sigterm", stopped_in=f"{stopped_after:.1f}s"))
    assert stopped_after < 5
    # Whether the busy worker still had a job asleep between attempts at that moment is a race
    # (its jobs may wake to the recovered sink first), so the hand-back itself is not asserted.
    assert result.lost == 0
    assert result.dead_lettered == 0


def test_a_poison_event_never_blocks_the_others(faulty: System, sink_server: SinkServer) -> None:
    sink = sink_server.sink
    sink.answer = lambda request: 500 if request.headers.get("ce-id") == "poison" else 204
    assert faulty.publish_binary("poison", "faults", "order.created.v1").status_code == 204
    load = Load(faulty.proxy_url, "poison-neighbours", rate=RATE).start()
    time.sleep(8)
    load.stop()
    result = settle(load, sink, faulty.nats_url)
    poison_attempts = sum(1 for d in sink.received(500) if d.event_id == "poison")
    print(result.line("poison", poison_attempts=str(poison_attempts)))
    assert result.lost == 0
    assert poison_attempts >= 3
    assert "poison" not in sink.ids(204)
