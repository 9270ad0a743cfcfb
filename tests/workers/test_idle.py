"""An idle worker waits without polling: an enqueue wakes it, a shutdown releases it.

On a real Redis, with waits far longer than the tests (10 minutes): whatever ends a wait in
these tests is the wake-up or the release, never a timer running out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from queue import Empty

import dramatiq
import pytest
import redis

from eventing.delivery import jobs
from eventing.settings import DeliverySettings
from eventing.wakeup import WakingRedisBroker
from testing.servers import RedisServer, wait_until
from tests.workers.conftest import KEY, make_job
from workers import idle
from workers.idle import QuietThreads, ReleasableQueue

LONG = 600.0  # seconds: no wait in these tests may end by running out


@pytest.fixture
def broker(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WakingRedisBroker]:
    monkeypatch.setattr(idle, "IDLE_WAIT", LONG)
    broker = WakingRedisBroker(url=redis_server.url, idle_poll=LONG)
    broker.add_middleware(QuietThreads())
    broker.emit_after("process_boot")
    yield broker
    broker.close()


def _worker(broker: WakingRedisBroker) -> dramatiq.Worker:
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=20)
    worker.start()
    return worker


def test_a_job_enqueued_while_the_worker_is_idle_wakes_it(broker: WakingRedisBroker) -> None:
    done = threading.Event()

    @dramatiq.actor(broker=broker, queue_name="wake-test")
    def job() -> None:
        done.set()

    worker = _worker(broker)
    try:
        time.sleep(1)  # the consumer found its queue empty and waits (for ten minutes)
        job.send()
        assert done.wait(20), "the enqueued job did not wake the idle worker"
    finally:
        worker.stop()


def test_an_idle_worker_stops_at_once(broker: WakingRedisBroker) -> None:
    @dramatiq.actor(broker=broker, queue_name="stop-test")
    def job() -> None:
        pass

    worker = _worker(broker)
    time.sleep(1)  # every thread is in its (ten-minute) wait
    stopping = threading.Thread(target=worker.stop)
    stopping.start()
    stopping.join(20)
    assert not stopping.is_alive(), "an idle worker did not stop when asked"


def test_a_released_queue_ends_every_wait_and_still_hands_out_what_it_holds() -> None:
    queue = ReleasableQueue()
    outcomes: list[str] = []

    def read() -> None:
        try:
            outcomes.append(queue.get(timeout=LONG))
        except Empty:
            outcomes.append("released")

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    queue.put("job")
    time.sleep(0.2)  # the other two wait
    queue.release()
    for reader in readers:
        reader.join(20)
    assert sorted(outcomes) == ["job", "released", "released"]
    queue.put("late")
    assert queue.get(timeout=LONG) == "late"
    with pytest.raises(Empty):
        queue.get(timeout=LONG)


def test_every_broker_of_the_project_wakes_workers(redis_server: RedisServer) -> None:
    """The manager enqueues through make_broker: its jobs must wake idle workers too."""
    broker = jobs.make_broker(DeliverySettings(broker_url=redis_server.url))
    assert isinstance(broker, WakingRedisBroker)
    listener = redis.Redis.from_url(redis_server.url).pubsub()  # type: ignore[no-untyped-call]
    listener.subscribe(broker.wake_channel(jobs.QUEUE))
    wait_until(lambda: listener.get_message(timeout=1) is not None, 10, "the subscription")
    jobs.enqueue(broker, [make_job()], KEY)
    message = listener.get_message(timeout=10)
    assert message is not None and message["type"] == "message"
    broker.close()


def test_a_full_consumer_fetches_again_once_a_quarter_of_its_prefetch_is_free(
    broker: WakingRedisBroker,
) -> None:
    """Not one fetch per ack: a busy worker takes its jobs several at a time."""

    @dramatiq.actor(broker=broker, queue_name="fill-test")
    def job() -> None:
        pass

    for _ in range(20):
        job.send()
    consumer = broker.consume("fill-test", prefetch=8, timeout=20)
    try:
        taken = [message for _ in range(8) if (message := next(consumer)) is not None]
        assert len(taken) == 8
        consumer.ack(taken[0])
        assert next(consumer) is None  # 7 of 8 outstanding: no fetch yet
        consumer.ack(taken[1])
        assert next(consumer) is not None  # 6 of 8: the two free places are fetched at once
        assert len(consumer.message_cache) == 1  # type: ignore[attr-defined]
    finally:
        consumer.close()
