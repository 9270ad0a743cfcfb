"""Pipelined requests on one reply subscription (eventing.nats.replies), on a real nats-server."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from eventing.errors import BackendUnavailable, PublishError
from eventing.nats.replies import NoResponders, Replies
from testing.servers import NatsServer, processed

pytestmark = pytest.mark.integration


class _Connected:
    """What Replies reads of a JetStreamClient: its current connection."""

    def __init__(self, nc: Client | None) -> None:
        self.connection = nc


async def _responder(nc: Client, seen: list[bytes]) -> None:
    async def answer(msg: Msg) -> None:
        seen.append(msg.data)
        if msg.subject != "svc.silent":
            await msg.respond(b"")

    await nc.subscribe("svc.*", cb=answer)
    await processed(nc)


def test_each_message_of_a_round_has_its_own_outcome(nats_server: NatsServer) -> None:
    async def scenario() -> tuple[list[BaseException | None], list[bytes]]:
        nc = await nats.connect(nats_server.url)
        seen: list[bytes] = []
        try:
            await _responder(nc, seen)
            replies = Replies(_Connected(nc))  # type: ignore[arg-type]
            results = await replies.confirm(
                [
                    ("svc.one", b"1", None),
                    ("svc.silent", b"2", None),  # received, never answered
                    ("nobody.listens", b"3", None),
                    ("svc.two", b"4", {"Nats-Msg-Id": "x"}),
                ],
                timeout=0.5,
            )
            assert replies.pending == 0  # the timed-out one is no longer waited for
            return results, seen
        finally:
            await nc.close()

    results, seen = asyncio.run(scenario())
    assert results[0] is None and results[3] is None
    assert isinstance(results[1], BackendUnavailable) and "not confirmed" in str(results[1])
    assert isinstance(results[2], NoResponders)
    assert sorted(seen) == [b"1", b"2", b"4"]


def test_a_refused_pub_ack_is_no_confirmation(nats_server: NatsServer) -> None:
    async def scenario() -> list[list[BaseException | None]]:
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().add_stream(name="kept", subjects=["kept.>"])
            replies, heard = Replies(_Connected(nc)), []  # type: ignore[arg-type]
            done = asyncio.Event()

            def finished(results: list[BaseException | None]) -> None:
                heard.append(results)
                done.set()

            wrong, right = {"Nats-Expected-Stream": "other"}, {"Nats-Expected-Stream": "kept"}
            await replies.send([("kept.a", b"a", wrong), ("kept.b", b"b", right)], 2.0, finished)
            await asyncio.wait_for(done.wait(), 5)
            assert (await nc.jetstream().stream_info("kept")).state.messages == 1
            return heard
        finally:
            await nc.close()

    [[refused, stored]] = asyncio.run(scenario())
    assert isinstance(refused, PublishError) and stored is None


def test_a_new_connection_gets_the_subscription_again(nats_server: NatsServer) -> None:
    async def scenario() -> list[BaseException | None]:
        first, second = await nats.connect(nats_server.url), await nats.connect(nats_server.url)
        try:
            await _responder(second, [])
            current = _Connected(first)
            replies = Replies(current)  # type: ignore[arg-type]
            assert await replies.confirm([("svc.one", b"", None)], 2.0) == [None]
            await first.close()  # nats-py gave it up; the client connected anew
            current.connection = second
            return await replies.confirm([("svc.one", b"", None)], 2.0)
        finally:
            await second.close()

    assert asyncio.run(scenario()) == [None]


def test_nothing_is_sent_without_a_connection() -> None:
    async def scenario(nc: Any) -> None:
        await Replies(_Connected(nc)).confirm([("svc.one", b"", None)], 1.0)  # type: ignore[arg-type]

    with pytest.raises(BackendUnavailable):
        asyncio.run(scenario(None))
