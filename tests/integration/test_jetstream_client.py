"""JetStreamClient, the one NATS connection of each process, against a real nats-server."""

from __future__ import annotations

import asyncio

import nats
import pytest

from eventing.errors import StreamNotAnswering
from eventing.nats.client import JetStreamClient
from eventing.nats.messages import OutboundMessage
from eventing.settings import Settings
from testing.servers import NatsServer

pytestmark = pytest.mark.integration


def test_a_connection_the_library_closes_for_good_is_opened_again(
    nats_server: NatsServer,
) -> None:
    """nats-py closes a connection for good after some protocol errors, despite unlimited
    reconnects; the client must not stay cut off from NATS for the rest of the process."""
    settings = Settings.from_environ({"NATS_URL": nats_server.url, "RECONNECT_WAIT": "100ms"})
    message = OutboundMessage("kyma.app.order.created.v1", b"{}", {}, "order.created.v1", "app")

    async def scenario() -> tuple[bool, bool, int]:
        client = JetStreamClient(settings.nats, settings.stream, name="test")
        client.start()
        try:
            assert await client.wait_connected(10)
            first = client._nc  # the library's connection, closed here as nats-py would
            assert first is not None
            await first.close()
            closed = not client.is_connected
            for _ in range(100):
                if client.is_connected:
                    break
                await asyncio.sleep(0.05)
            reopened = client.is_connected and client._nc is not first
            await client.publish(message, 5)  # raises unless stored
            observer = await nats.connect(nats_server.url)
            try:
                info = await observer.jetstream().stream_info(settings.stream.name)
            finally:
                await observer.close()
            return closed, reopened, info.state.last_seq  # interest retention: no consumer keeps it
        finally:
            await client.close()

    closed, reopened, stored = asyncio.run(scenario())

    assert closed
    assert reopened
    assert stored == 1


def test_a_publish_that_finds_no_stream_creates_it_and_is_stored(
    nats_server: NatsServer,
) -> None:
    """A wiped server: the first publish gets no responder, has the stream made again in the
    background, and is sent again until it is stored, all within its timeout."""
    settings = Settings.from_environ({"NATS_URL": nats_server.url, "RECONNECT_WAIT": "100ms"})
    message = OutboundMessage("kyma.app.order.created.v1", b"{}", {}, "order.created.v1", "app")

    async def scenario() -> int:
        client = JetStreamClient(settings.nats, settings.stream, name="test")
        client.start()
        observer = await nats.connect(nats_server.url)
        try:
            assert await client.wait_connected(10)
            await observer.jetstream().delete_stream(settings.stream.name)
            await client.publish(message, 5)  # raises unless stored
            info = await observer.jetstream().stream_info(settings.stream.name)
            return info.state.last_seq
        finally:
            await observer.close()
            await client.close()

    assert asyncio.run(scenario()) == 1


def test_a_publish_no_stream_takes_within_its_timeout_is_not_answered(
    nats_server: NatsServer,
) -> None:
    settings = Settings.from_environ({"NATS_URL": nats_server.url})
    message = OutboundMessage("kyma.app.order.created.v1", b"{}", {}, "order.created.v1", "app")

    async def scenario() -> None:
        client = JetStreamClient(settings.nats, settings.stream, name="test", streams=())
        client.start()
        try:
            assert await client.wait_connected(10)
            await client.publish(message, 0.5)
        finally:
            await client.close()

    with pytest.raises(StreamNotAnswering, match="no stream answered"):
        asyncio.run(scenario())
