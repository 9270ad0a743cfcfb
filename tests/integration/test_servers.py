"""The server fixtures themselves: start, crash and restart on the same data; their ports."""

from __future__ import annotations

import asyncio

import nats
import pytest

from testing.servers import NatsServer, RedisServer, free_port

pytestmark = pytest.mark.integration


def test_nats_keeps_its_stream_across_a_kill(nats_server: NatsServer) -> None:
    async def publish() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(name="kept", subjects=["kept.>"])
        await js.publish("kept.a", b"1")
        await nc.close()

    async def count() -> int:
        nc = await nats.connect(nats_server.url)
        info = await nc.jetstream().stream_info("kept")
        await nc.close()
        return int(info.state.messages)

    asyncio.run(publish())
    nats_server.kill()
    nats_server.start()
    assert asyncio.run(count()) == 1


def test_redis_restarts_and_can_be_wiped(redis_server: RedisServer) -> None:
    assert redis_server.ping()
    redis_server.kill()
    assert not redis_server.ping()
    redis_server.wipe()
    redis_server.start()
    assert redis_server.ping()


def test_ports_handed_out_one_after_another_are_all_different() -> None:
    """Picked before any is bound (a System's, a cluster's), two must never be the same port:
    the kernel's binds to port 0 gave 300 in a row a repeated port most of the time."""
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
