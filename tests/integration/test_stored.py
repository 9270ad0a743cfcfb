"""Scanning, following, reading and deleting stored messages by subject against a real
nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest

from eventing.errors import NotFound
from eventing.nats.stored import StoredMessage, StoredMessages
from testing.servers import NatsServer

pytestmark = pytest.mark.integration


def _on_filled(
    server: NatsServer, scenario: Callable[[Any, StoredMessages], Awaitable[None]]
) -> None:
    """Run ``scenario`` with the JetStream context and reader of a stream of six messages on
    dlq.c0, dlq.c1 and dlq.c2 in turn."""

    async def run() -> None:
        client = await nats.connect(server.url)
        try:
            js = client.jetstream()
            await js.add_stream(name="letters", subjects=["dlq.>"])
            for n in range(6):
                await js.publish(f"dlq.c{n % 3}", f"body {n}".encode(), headers={"n": str(n)})
            await scenario(js, StoredMessages(js))
        finally:
            await client.close()

    asyncio.run(run())


def test_a_scan_is_filtered_by_subjects_starts_where_asked_and_reads_headers_alone(
    nats_server: NatsServer,
) -> None:
    async def scenario(js: Any, stored: StoredMessages) -> None:
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
            m.sequence async for m in stored.scan("letters", subjects, after=3, headers_only=True)
        ]
        assert later == [4, 6]
        bodies = {m.data async for m in stored.scan("letters", ["dlq.>"], headers_only=True)}
        assert bodies == {b""}
        assert [m async for m in stored.scan("letters", ["dlq.>"], since=time.time() + 60)] == []

    _on_filled(nats_server, scenario)


def test_a_scan_stopped_early_leaves_no_consumer_and_deleted_messages_are_gone(
    nats_server: NatsServer,
) -> None:
    async def scenario(js: Any, stored: StoredMessages) -> None:
        scan = stored.scan("letters", ["dlq.>"])
        async with contextlib.aclosing(scan):
            async for _ in scan:
                break
        assert await js.consumers_info("letters") == []
        assert await stored.delete("letters", 2) is True
        assert await stored.delete("letters", 2) is False
        with pytest.raises(NotFound):
            await stored.get("letters", 2)
        assert (await stored.get("letters", 3)).headers["n"] == "2"
        with pytest.raises(NotFound):
            [m async for m in stored.scan("nothing", ["dlq.>"])]

    _on_filled(nats_server, scenario)


def test_a_bounded_scan_stops_at_its_limit_and_leaves_no_consumer(nats_server: NatsServer) -> None:
    async def scenario(js: Any, stored: StoredMessages) -> None:
        first = [m.sequence async for m in stored.scan("letters", ["dlq.>"], limit=4)]
        assert first == [1, 2, 3, 4]
        filtered = [m.sequence async for m in stored.scan("letters", ["dlq.c1"], limit=10)]
        assert filtered == [2, 5]
        assert await js.consumers_info("letters") == []

    _on_filled(nats_server, scenario)


def test_following_reads_what_is_stored_from_now_or_since_and_leaves_no_consumer(
    nats_server: NatsServer,
) -> None:
    async def scenario(js: Any, stored: StoredMessages) -> None:
        async with stored.follow("letters", "dlq.c1") as batches:
            await js.publish("dlq.c0", b"not followed")
            await js.publish("dlq.c1", b"new")
            new = await _followed(batches, 1)
        assert [(m.sequence, m.data) for m in new] == [(8, b"new")]
        async with stored.follow("letters", "dlq.c2", since=time.time() - 60) as batches:
            since = await _followed(batches, 2)
        assert [m.sequence for m in since] == [3, 6]
        assert await js.consumers_info("letters") == []
        with pytest.raises(NotFound):
            async with stored.follow("nothing", "dlq.>"):
                pass

    _on_filled(nats_server, scenario)


async def _followed(batches: AsyncIterator[list[StoredMessage]], count: int) -> list[StoredMessage]:
    """The first ``count`` messages followed, within a few idle batches (about one a second)."""
    found: list[StoredMessage] = []
    for _ in range(10):
        found += await anext(batches)
        if len(found) >= count:
            return found
    raise AssertionError(f"{len(found)} of {count} message(s) followed within 10 batches")
