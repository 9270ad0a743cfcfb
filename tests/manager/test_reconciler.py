"""The reconciler in-process against a real nats-server: consumers made, kept, refused.

The pull tasks are a recording fake (our own seam, :class:`~manager.reconciler.Pulls`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest

from eventing.settings import Settings
from eventing.sources.snapshot import Snapshot
from manager import consumers, runner
from manager.metrics import ManagerMetrics
from manager.reconciler import Reconciler
from testing.servers import NatsServer
from tests.manager.test_runner import settings_for, subscription

pytestmark = pytest.mark.integration


class RecordingPulls:
    def __init__(self) -> None:
        self.targets: list[dict[str, consumers.Target]] = []

    def sync(self, targets: dict[str, consumers.Target]) -> None:
        self.targets.append(dict(targets))


@asynccontextmanager
async def reconciler_for(
    settings: Settings,
) -> AsyncIterator[tuple[Reconciler, RecordingPulls, ManagerMetrics]]:
    client = runner.jetstream_client(settings, name="test-reconciler")
    client.start()
    try:
        assert await client.wait_connected(10)
        await client.ensure_stream()
        pulls, metrics = RecordingPulls(), ManagerMetrics()
        reconciler = Reconciler.for_settings(client, pulls, metrics, settings)
        yield reconciler, pulls, metrics
    finally:
        await client.close()


def subscribed(metrics: ManagerMetrics) -> float:
    return sum(
        sample.value
        for family in metrics.registry.collect()
        if family.name == "eventing_ec_event_type_subscribed"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def test_a_consumer_is_created_once_and_its_pulls_follow(nats_server: NatsServer) -> None:
    settings = settings_for(nats_server.url)
    orders = subscription(settings, "orders")
    [binding] = orders.bindings

    async def scenario() -> None:
        async with reconciler_for(settings) as (reconciler, pulls, metrics):
            first = await reconciler.reconcile(Snapshot((orders,)))
            again = await reconciler.reconcile(Snapshot((orders,)))
            gone = await reconciler.reconcile(Snapshot(()))

            for outcome in (first, again, gone):
                assert outcome.problem is None and dict(outcome.errors) == {}
                assert outcome.deletions_done
            assert [list(targets) for targets in pulls.targets] == [
                [binding.consumer_name],
                [binding.consumer_name],
                [],
            ]
            assert pulls.targets[0][binding.consumer_name].subscription == orders
            assert subscribed(metrics) == 1  # created once, kept the second time

    asyncio.run(scenario())


def test_a_refused_consumer_is_an_error_of_its_own_and_is_not_pulled(
    nats_server_one_consumer: NatsServer,
) -> None:
    settings = settings_for(nats_server_one_consumer.url)
    first, second = subscription(settings, "first"), subscription(settings, "second", "b.c.v1")
    [kept], [refused] = first.bindings, second.bindings

    async def scenario() -> None:
        async with reconciler_for(settings) as (reconciler, pulls, _):
            outcome = await reconciler.reconcile(Snapshot((first, second)))

            assert outcome.problem is None
            assert list(outcome.errors) == [refused.consumer_name]
            assert "maximum consumers limit reached" in outcome.errors[refused.consumer_name]
            assert list(pulls.targets[-1]) == [kept.consumer_name]
            assert reconciler.next_retry is not None

    asyncio.run(scenario())


def test_a_refused_sink_keeps_its_consumer_but_its_pulls_are_held(nats_server: NatsServer) -> None:
    settings = settings_for(nats_server.url)
    allowed = subscription(settings, "allowed")
    metadata = replace(subscription(settings, "metadata"), sink="http://169.254.169.254/")

    async def scenario() -> None:
        async with reconciler_for(settings) as (reconciler, pulls, metrics):
            outcome = await reconciler.reconcile(Snapshot((allowed, metadata)))

            assert outcome.problem is None and dict(outcome.errors) == {}
            assert list(outcome.refused) == ["default/metadata"]
            assert "link-local" in outcome.refused["default/metadata"]
            [held] = [t for t in pulls.targets[-1].values() if t.subscription == metadata]
            assert held.held == outcome.refused["default/metadata"]
            [pulled] = [t for t in pulls.targets[-1].values() if t.subscription == allowed]
            assert pulled.held is None
            assert subscribed(metrics) == 2  # both consumers: its events wait for a change

    asyncio.run(scenario())


def test_without_nats_nothing_is_reconciled_and_the_pulls_stay_as_they_were() -> None:
    settings = settings_for("nats://127.0.0.1:1")

    async def scenario() -> None:
        client = runner.jetstream_client(settings)
        pulls = RecordingPulls()
        reconciler = Reconciler.for_settings(client, pulls, ManagerMetrics(), settings)
        outcome = await reconciler.reconcile(Snapshot((subscription(settings, "orders"),)))
        assert outcome.problem == "NATS connection not ready"
        assert not outcome.deletions_done and pulls.targets == []

    asyncio.run(scenario())
