"""The manager in-process: its loop, reconciler and status board against a real nats-server.

The subscriptions come from a fake source (our own seam, :class:`~eventing.sources.source.
SubscriptionSource`) and jobs go to a recording broker (our own seam,
:class:`~eventing.delivery.jobs.Broker`); NATS, JetStream and the pull tasks are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
import requests

from eventing.delivery import jobs
from eventing.errors import InvalidSubscription
from eventing.events import eventtypes
from eventing.nats.client import JetStreamClient
from eventing.settings import Settings
from eventing.sources import snapshot
from eventing.sources.snapshot import Snapshot, Unreadable
from eventing.subscriptions.model import Subscription
from manager import runner
from manager.board import StatusBoard
from manager.metrics import ManagerMetrics
from manager.runner import Manager
from testing.servers import NatsServer, RedisServer, free_port

pytestmark = pytest.mark.integration

API = "eventing.kyma-project.io/v1alpha2"


def settings_for(nats_url: str, **env: str) -> Settings:
    return Settings.from_environ(
        {"NATS_URL": nats_url, "RECONNECT_WAIT": "100ms", "NATS_CONNECT_TIMEOUT": "1s", **env}
    )


def subscription(
    settings: Settings, name: str, event_type: str = "order.created.v1"
) -> Subscription:
    document = {
        "apiVersion": API,
        "kind": "Subscription",
        "metadata": {"name": name},
        "spec": {"sink": "http://127.0.0.1:9/", "source": "shop", "types": [event_type]},
    }
    return snapshot.parser_for(settings)(document)


def invalid(key: str, problem: str) -> InvalidSubscription:
    return InvalidSubscription(key, [problem])


@dataclass
class FakeSource:
    """A subscription source whose snapshot the test sets; reads may be made to fail."""

    snapshot: Snapshot = field(default_factory=lambda: Snapshot(()))
    failure: Exception | None = None
    ready: bool = True
    failed_reads: int = 0
    _seen: Snapshot | None = None

    def write_back(self, items: Sequence[dict[str, Any]], consumers_gone: bool) -> None:
        """Nothing to write back to: the snapshot is the test's."""

    def read(self) -> tuple[Snapshot, bool]:
        if self.failure is not None:
            self.failed_reads += 1
            raise self.failure
        changed, self._seen = self.snapshot != self._seen, self.snapshot
        return self.snapshot, changed


class RecordingBroker:
    """Keeps what would be enqueued for the workers (called from threads)."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self._lock = threading.Lock()

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        with self._lock:
            self.messages.append(message)
        return message


@dataclass
class Running:
    settings: Settings
    source: FakeSource
    client: JetStreamClient
    board: StatusBoard
    broker: RecordingBroker
    manager: Manager

    def item(self, key: str) -> dict[str, Any] | None:
        return self.board.view.by_key.get(key)

    async def consumers(self) -> set[str]:
        connection = await nats.connect(self.settings.nats.urls[0])
        try:
            infos = await connection.jetstream().consumers_info(self.settings.stream.name)
        finally:
            await connection.close()
        return {info.name for info in infos}

    async def publish(self, subject: str, data: bytes) -> None:
        connection = await nats.connect(self.settings.nats.urls[0])
        try:
            await connection.jetstream().publish(subject, data)
        finally:
            await connection.close()


async def eventually(predicate: Callable[[], Any], what: str, timeout: float = 20) -> None:
    """Poll ``predicate`` (a value or an awaitable) until true, or fail after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def manager_of(settings: Settings, source: FakeSource) -> AsyncIterator[Running]:
    """A manager running on this loop until the block ends; then stopped as SIGTERM stops it."""
    client = runner.jetstream_client(settings, name="test-manager")
    client.start()
    metrics = ManagerMetrics()
    board = StatusBoard.for_settings(settings, metrics)
    broker = RecordingBroker()
    manager = Manager.assemble(settings, source, client, broker, board, metrics)
    stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tasks:
            loop = tasks.create_task(manager.run(stop))
            yield Running(settings, source, client, board, broker, manager)
            stop.set()
        assert loop.done() and loop.exception() is None
    finally:
        await client.close()


def test_a_subscription_gets_a_consumer_its_events_become_jobs_and_removal_deletes_it(
    nats_server: NatsServer,
) -> None:
    settings = settings_for(nats_server.url)
    orders = subscription(settings, "orders")
    [binding] = orders.bindings

    async def scenario() -> None:
        async with manager_of(settings, FakeSource(Snapshot((orders,)))) as running:
            await eventually(
                lambda: (item := running.item("default/orders")) and item["status"]["ready"],
                "the subscription ready",
            )
            assert running.board.view.ready
            assert binding.consumer_name in await running.consumers()

            subject = eventtypes.standard_subject("shop", "order.created.v1")
            await running.publish(subject, b'{"id": "e1"}')
            await eventually(lambda: running.broker.messages, "a job enqueued")
            [message] = running.broker.messages
            job = jobs.DeliveryJob.from_dict(message.kwargs["job"])
            assert (job.subscription, job.consumer) == ("default/orders", binding.consumer_name)
            assert job.sink == "http://127.0.0.1:9/" and json.loads(job.event) == {"id": "e1"}

            running.source.snapshot = Snapshot(())
            await eventually(
                lambda: running.item("default/orders") is None, "the subscription gone"
            )
            assert binding.consumer_name not in await running.consumers()

    asyncio.run(scenario())


def test_while_nats_is_unreachable_every_subscription_says_so_and_nothing_is_ready() -> None:
    settings = settings_for(f"nats://127.0.0.1:{free_port()}")
    orders = subscription(settings, "orders")

    async def scenario() -> None:
        async with manager_of(settings, FakeSource(Snapshot((orders,)))) as running:
            await eventually(lambda: running.item("default/orders"), "the subscription shown")
            item = running.item("default/orders")
            assert item is not None and item["status"]["ready"] is False
            assert "NATS connection not ready" in json.dumps(item["status"])
            assert running.board.view.ready is False

    asyncio.run(scenario())


def test_a_failed_read_keeps_the_last_subscriptions_and_is_logged_once(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(nats_server.url)
    orders = subscription(settings, "orders")
    [binding] = orders.bindings

    async def scenario() -> None:
        source = FakeSource(Snapshot((orders,)))
        async with manager_of(settings, source) as running:
            await eventually(
                lambda: (item := running.item("default/orders")) and item["status"]["ready"],
                "the subscription ready",
            )
            source.failure = OSError("the disk went away")
            await eventually(
                lambda: caplog.text.count("reading the subscriptions failed") == 1, "the log line"
            )
            await eventually(lambda: source.failed_reads >= 3, "two more failed reads")
            assert caplog.text.count("reading the subscriptions failed") == 1
            assert running.item("default/orders") is not None
            assert binding.consumer_name in await running.consumers()

    with caplog.at_level(logging.WARNING, logger="manager"):
        asyncio.run(scenario())


def test_each_problem_of_the_source_is_logged_once_until_it_changes(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(nats_server.url)
    broken = invalid("default/broken", "spec.sink: must not be empty")
    unreadable = Unreadable("bad.yaml", "not a regular file")
    orders = subscription(settings, "orders")

    async def scenario() -> None:
        source = FakeSource(Snapshot((broken,), (unreadable,)))
        async with manager_of(settings, source) as running:
            await eventually(lambda: running.item("default/broken"), "the invalid one shown")
            source.snapshot = Snapshot((broken, orders), (unreadable,))  # a reconcile again
            await eventually(lambda: running.item("default/orders"), "the valid one shown")
            renamed = Unreadable("bad.yaml", "not valid YAML")
            source.snapshot = Snapshot((broken, orders), (renamed,))
            await eventually(
                lambda: (
                    running.board.view.unreadable
                    == ({"file": "bad.yaml", "problem": "not valid YAML"},)
                ),
                "the changed problem shown",
            )
            item = running.item("default/broken")
            assert item is not None
            assert "spec.sink: must not be empty" in json.dumps(item["status"])

    with caplog.at_level(logging.WARNING, logger="manager"):
        asyncio.run(scenario())
    assert caplog.text.count("subscription default/broken is invalid: spec.sink") == 1
    assert caplog.text.count("manifest file bad.yaml is unreadable: not a regular file") == 1
    assert caplog.text.count("manifest file bad.yaml is unreadable: not valid YAML") == 1


def test_run_serves_status_and_on_sigterm_stops_its_pull_tasks_and_its_port(
    nats_server: NatsServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    folder = tmp_path / "subscriptions"
    folder.mkdir()
    port = free_port()
    settings = settings_for(
        nats_server.url,
        SUBSCRIPTIONS_DIR=str(folder),
        MANAGER_HOST="127.0.0.1",
        MANAGER_PORT=str(port),
        BROKER_URL=redis_server.url,
    )
    (folder / "orders.yaml").write_text(
        json.dumps(
            {
                "apiVersion": API,
                "kind": "Subscription",
                "metadata": {"name": "orders"},
                "spec": {"sink": "http://127.0.0.1:9/", "source": "shop", "types": ["a.b.v1"]},
            }
        )
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            answer = requests.get(f"{url}/subscriptions/default/orders", timeout=1)
        except requests.ConnectionError:
            return False
        return answer.ok and bool(answer.json()["status"]["ready"])

    async def scenario() -> bool:
        running = asyncio.create_task(runner.run(settings))
        await eventually(lambda: asyncio.to_thread(ready), "the subscription served")
        alone = {asyncio.current_task(), running}
        assert asyncio.all_tasks() - alone  # pulling, connected, serving
        os.kill(os.getpid(), signal.SIGTERM)
        kept = await asyncio.wait_for(running, 20)
        # Every task it started ended with it: pull tasks, connection, status server.
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return kept

    try:
        assert asyncio.run(scenario()) is True
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=1)
