"""The replay archive against a real nats-server: what JetStream does with a stream that sources
the event stream (interest retention) into one of its own (limits retention)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from eventing.nats.client import JetStreamClient
from eventing.nats.consumers import ConsumerApi
from eventing.nats.messages import OutboundMessage, source_sequence
from eventing.nats.streams import Consumer
from eventing.settings import Settings
from manager.runner import jetstream_client
from testing.servers import NatsServer

pytestmark = pytest.mark.integration

SUBJECT = "kyma.app.order.created.v1"


def _event(number: int) -> OutboundMessage:
    return OutboundMessage(SUBJECT, b'{"n": %d}' % number, {}, "order.created.v1", "app")


async def _eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def _manager_connection(server: NatsServer, **env: str) -> JetStreamClient:
    """The manager's connection, which creates the event stream and the archive."""
    settings = Settings.from_environ({"NATS_URL": server.url, "RECONNECT_WAIT": "100ms", **env})
    client = jetstream_client(settings, name="test-manager")
    client.start()
    assert await client.wait_connected(10)
    js = client.jetstream

    async def sourcing() -> bool:  # the archive's sourcing consumer is up on the event stream
        return len(await js.consumers(settings.stream.name)) == 1

    await _eventually(sourcing, "the archive's sourcing consumer")
    return client


def test_events_published_before_any_subscription_are_archived_and_leave_the_event_stream(
    nats_server: NatsServer,
) -> None:
    """On main the event stream (interest retention, no consumer yet) dropped them at once, and
    there was no archive; now the archive has every one, by its event stream sequence, and the
    event stream keeps none (the sourcing consumer acked them)."""

    async def scenario() -> tuple[list[int | None], int]:
        client = await _manager_connection(nats_server)
        js = client.jetstream
        try:
            for number in range(5):
                await client.publish(_event(number), 5)

            async def archived() -> bool:
                return (await js.stream_state("sap-archive")).messages == 5

            await _eventually(archived, "5 events in the archive")

            async def left() -> bool:
                return (await js.stream_state("sap")).messages == 0

            await _eventually(left, "the event stream to let them go")
            origins = []
            for sequence in range(1, 6):
                stored = await js.stored("sap-archive", sequence)
                assert stored is not None
                origins.append(source_sequence(stored.headers))
            return origins, (await js.stream_state("sap")).last_sequence
        finally:
            await client.close()

    origins, last = asyncio.run(scenario())

    assert origins == [1, 2, 3, 4, 5]
    assert last == 5


def test_the_event_stream_keeps_an_event_until_every_subscription_acked_it_then_lets_it_go(
    nats_server: NatsServer,
) -> None:
    """The archive's sourcing consumer neither holds events in the event stream forever nor
    makes them vanish before a live consumer got them."""

    async def scenario() -> tuple[int, int, int, int]:
        client = await _manager_connection(nats_server)
        js: ConsumerApi = client.jetstream
        try:
            await js.put("sap", Consumer("live", (SUBJECT,), max_ack_pending=100, ack_wait=30))
            for number in range(5):
                await client.publish(_event(number), 5)

            async def archived() -> bool:
                return (await js.stream_state("sap-archive")).messages == 5

            await _eventually(archived, "5 events in the archive")
            await asyncio.sleep(1.5)  # past the sourcing consumer's ack rounds
            kept = (await js.stream_state("sap")).messages  # the live consumer has not acked
            pull = await js.pull("sap", "live")
            try:
                messages = await pull.fetch(5, 2)
                got = len(messages)
                for message in messages:
                    await client.acknowledge(message.reply, b"+ACK", 5)
            finally:
                await pull.close()

            async def left() -> bool:
                return (await js.stream_state("sap")).messages == 0

            await _eventually(left, "the event stream to let the acked events go")
            archive = await js.stream_state("sap-archive")
            return kept, got, (await js.stream_state("sap")).messages, archive.messages
        finally:
            await client.close()

    kept, got, left, archived = asyncio.run(scenario())

    assert (kept, got) == (5, 5)
    assert left == 0
    assert archived == 5  # the archive keeps what the event stream let go


def test_an_archive_turned_off_is_deleted_and_no_longer_holds_events(
    nats_server: NatsServer,
) -> None:
    """EVENT_ARCHIVE_MAX_AGE=0: the manager deletes an archive it finds (turned off, it would
    keep copying every event into its disk budget)."""

    async def scenario() -> tuple[int, list[str]]:
        client = await _manager_connection(nats_server)
        await client.close()
        settings = Settings.from_environ(
            {"NATS_URL": nats_server.url, "EVENT_ARCHIVE_MAX_AGE": "0"}
        )
        off = jetstream_client(settings, name="test-manager-off")
        off.start()
        try:
            assert await off.wait_connected(10)
            await off.publish(_event(1), 5)
            names = [c.name for c in await off.jetstream.consumers("sap")]
            return (await off.jetstream.stream_state("sap")).messages, names
        finally:
            await off.close()

    messages, consumers = asyncio.run(scenario())

    assert consumers == []  # no sourcing consumer: the archive is gone
    assert messages == 0  # interest retention as before: no subscription, not kept
