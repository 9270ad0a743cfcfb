"""JetStreamClient, the one NATS connection of each process, against a real nats-server."""

from __future__ import annotations

import asyncio

import nats
import pytest

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
