"""The whole system at rest asks Redis next to nothing (it polled 50 times a second)."""

from __future__ import annotations

import time

import pytest
import redis

from testing.servers import RedisServer
from testing.system import System

pytestmark = pytest.mark.integration


def test_an_idle_system_sends_redis_few_commands(system: System, redis_server: RedisServer) -> None:
    """Polling every 20 ms cost about 400 commands a second per worker process; waiting for
    wake-ups, a few. The bound is a tenth of the old rate."""
    client = redis.Redis.from_url(redis_server.url)
    system.subscribe(
        "orders", {"sink": "http://127.0.0.1:9/", "source": "shop", "types": ["order.created.v1"]}
    )

    def calls() -> int:
        stats = client.info("commandstats")
        return sum(int(v["calls"]) for name, v in stats.items() if name != "cmdstat_info")

    before, started = calls(), time.monotonic()
    time.sleep(5)
    per_second = (calls() - before) / (time.monotonic() - started)
    assert per_second < 40, f"{per_second:.0f} Redis commands a second while idle"
