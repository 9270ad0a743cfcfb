"""The replay archive against a real nats-server: what JetStream does with a stream that sources
the event stream (interest retention) into one of its own (limits retention)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

import nats
import pytest

from eventing.nats.client import JetStreamClient
from eventing.nats.consumers import ConsumerApi
from eventing.nats.messages import OutboundMessage, source_sequence
from eventing.nats.streams import Consumer
from eventing.settings import Settings
from manager.replays import expired
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
                stored = await client.stored.get("sap-archive", sequence)
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


def test_what_the_archive_aged_out_counts_as_expired_for_a_start_before_it(
    nats_server: NatsServer,
) -> None:
    """EVENT_ARCHIVE_MAX_AGE removes the oldest events by moving the first sequence on; a
    replay from before them counts every one removed, and one from after them none."""

    async def scenario() -> tuple[int, int, int, int]:
        client = await _manager_connection(nats_server, EVENT_ARCHIVE_MAX_AGE="1s")
        js = client.jetstream
        try:
            started = time.time()
            for number in range(4):
                await client.publish(_event(number), 5)

            async def aged_out() -> bool:
                return (await js.stream_state("sap-archive")).first_sequence == 5

            await _eventually(aged_out, "the archive to age its events out")
            await _keep_longer(nats_server, "sap-archive")  # the next ones stay to be counted
            for number in range(4, 6):
                await client.publish(_event(number), 5)

            async def kept() -> bool:
                return (await js.stream_state("sap-archive")).messages == 2

            await _eventually(kept, "the two newer events in the archive")
            return (
                await expired(client, "sap-archive", started - 60, None),
                await expired(client, "sap-archive", time.time() + 60, None),
                await expired(client, "sap-archive", None, 2),
                await expired(client, "sap-archive", None, 6),
            )
        finally:
            await client.close()

    before, after, from_sequence, within = asyncio.run(scenario())

    assert before == 4  # all four removed ones: the asked-for time lies before them
    assert after == 0
    assert from_sequence == 3  # sequences 2, 3 and 4: exact
    assert within == 0


async def _keep_longer(server: NatsServer, stream: str) -> None:
    connection = await nats.connect(server.url)
    try:
        js = connection.jetstream()
        config = (await js.stream_info(stream)).config
        await js.update_stream(dataclasses.replace(config, max_age=3600))
    finally:
        await connection.close()
