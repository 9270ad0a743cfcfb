"""The manager's ledger follower (:func:`manager.health.follow`) against a real nats-server:
it waits for a ledger stream the workers create later, and a restarted server costs it no
record and counts none twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import nats
import pytest

from eventing.delivery.ledger import AttemptRecord, Record
from eventing.nats import streams
from eventing.nats.client import JetStreamClient
from eventing.settings import Settings
from manager import health
from manager.health import DeliveryHealth
from testing.servers import NatsServer

pytestmark = pytest.mark.integration


def delivered(event: str) -> Record:
    now = time.time()
    attempt = AttemptRecord(1, now, 0.01, "answered", 204)
    return Record("default/orders", "shop", event, "a.b.v1", 1, "live", "delivered", now, attempt)


async def write(url: str, settings: Settings, records: list[Record]) -> None:
    connection = await nats.connect(url)
    try:
        js = connection.jetstream()
        await js.add_stream(streams.ledger_config(settings.stream))
        for record in records:
            message = record.message()
            await js.publish(message.subject, message.payload)
    finally:
        await connection.close()


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_the_follower_waits_for_the_ledger_and_survives_a_server_restart(
    nats_server: NatsServer,
) -> None:
    settings = Settings.from_environ({"NATS_URL": nats_server.url, "RECONNECT_WAIT": "100ms"})
    figures = DeliveryHealth()

    def count() -> int:
        orders = figures.figures().get("default/orders")
        return orders.delivered if orders else 0

    async def scenario() -> None:
        client = JetStreamClient(settings.nats, settings.stream, name="test", streams=())
        client.start()
        stop = asyncio.Event()
        following = asyncio.create_task(
            health.follow(client, settings.stream.ledger_name, figures, stop)
        )
        try:
            assert await client.wait_connected(10)
            await asyncio.sleep(0.5)  # the follower finds no ledger stream yet
            await write(nats_server.url, settings, [delivered(f"e{n}") for n in range(3)])
            await until(lambda: count() == 3, 20, "the first records")
            await asyncio.to_thread(nats_server.restart)
            await until(lambda: client.is_connected, 20, "the reconnection")
            await write(nats_server.url, settings, [delivered(f"f{n}") for n in range(3)])
            await until(lambda: count() == 6, 30, f"the records after the restart ({count()})")
            await asyncio.sleep(1)
            assert count() == 6, "no record counted twice"
        finally:
            stop.set()
            await following
            await client.close()

    asyncio.run(scenario())
