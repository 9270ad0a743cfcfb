"""Scanning, reading and deleting stored messages by subject against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import time

import nats
import pytest

from eventing.errors import NotFound
from eventing.nats.stored import StoredMessages
from testing.servers import NatsServer

pytestmark = pytest.mark.integration


async def _filled(server: NatsServer) -> tuple[nats.NATS, StoredMessages]:
    client = await nats.connect(server.url)
    js = client.jetstream()
    await js.add_stream(name="letters", subjects=["dlq.>"])
    for number in range(6):
        await js.publish(
            f"dlq.c{number % 3}", f"body {number}".encode(), headers={"n": str(number)}
        )
    return client, StoredMessages(js)


def test_a_scan_is_filtered_by_subjects_starts_where_asked_and_reads_headers_alone(
    nats_server: NatsServer,
) -> None:
    async def scenario() -> None:
        client, stored = await _filled(nats_server)
        try:
            subjects = ["dlq.c0", "dlq.c2"]
            found = [
                (m.sequence, m.headers["n"], m.data) async for m in stored.scan("letters", subjects)
            ]
            assert found == [
                (1, "0", b"body 0"),
                (3, "2", b"body 2"),
                (4, "3", b"body 3"),
                (6, "5", b"body 5"),
            ]
            later = [
                m.sequence
                async for m in stored.scan("letters", subjects, after=3, headers_only=True)
            ]
            assert later == [4, 6]
            bodies = {m.data async for m in stored.scan("letters", ["dlq.>"], headers_only=True)}
            assert bodies == {b""}
            assert [
                m async for m in stored.scan("letters", ["dlq.>"], since=time.time() + 60)
            ] == []
        finally:
            await client.close()

    asyncio.run(scenario())


def test_a_scan_stopped_early_leaves_no_consumer_and_deleted_messages_are_gone(
    nats_server: NatsServer,
) -> None:
    async def scenario() -> None:
        client, stored = await _filled(nats_server)
        try:
            scan = stored.scan("letters", ["dlq.>"])
            async with contextlib.aclosing(scan):
                async for _ in scan:
                    break
            assert await client.jetstream().consumers_info("letters") == []
            assert await stored.delete("letters", 2) is True
            assert await stored.delete("letters", 2) is False
            with pytest.raises(NotFound):
                await stored.get("letters", 2)
            assert (await stored.get("letters", 3)).headers["n"] == "2"
            with pytest.raises(NotFound):
                [m async for m in stored.scan("nothing", ["dlq.>"])]
        finally:
            await client.close()

    asyncio.run(scenario())
