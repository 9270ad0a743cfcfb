"""The system the end-to-end suites measure (:mod:`bench.e2e`, :mod:`bench.idle`): the test
harness's :class:`~testing.system.System` with the README's defaults, as ``honcho start`` runs
it, plus the port of the bench's sink and the pid of each component for the CPU and memory
samples.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.request
from pathlib import Path

from testing.servers import (
    NatsServer,
    RedisServer,
    free_port,
    nats_server_binary,
    redis_server_binary,
    wait_until,
)
from testing.system import System

COMPONENTS = ("proxy", "manager", "workers", "nats", "redis")


class BenchSystem:
    """The harness's system with the README's defaults, as ``honcho start`` runs it, plus the
    port of this bench's sink.

    Unlike the tests' settings: 2 granian workers, reconnects a second apart, one
    ``eventing-worker`` of 2 processes x 16 threads, no worker metrics, warnings only, and Redis
    in memory only (the bench measures the system, not Redis's disk).
    """

    def __init__(self, workdir: Path, **env: str) -> None:
        """``env`` adds settings, or overrides the log level (the peer suite runs at info)."""
        nats_binary, redis_binary = nats_server_binary(), redis_server_binary()
        if nats_binary is None or redis_binary is None:
            raise SystemExit("the end-to-end bench needs nats-server and redis-server")
        (workdir / "nats").mkdir()
        (workdir / "redis").mkdir()
        self.nats = NatsServer(nats_binary, workdir / "nats")
        self.redis = RedisServer(redis_binary, workdir / "redis", appendonly=False)
        self.system = System(
            self.nats,
            self.redis,
            workdir,
            PROXY_WORKERS="2",
            RECONNECT_WAIT="1s",
            WORKER_METRICS_PORT="0",
            WORKER_PROCESSES="2",
            WORKER_THREADS="16",
            MAX_REQUEST_SIZE="1Mi",
            **{"LOG_LEVEL": "warning", **env},
        )
        self.sink_port = free_port()

    @property
    def proxy(self) -> str:
        return f"127.0.0.1:{self.system.proxy_port}"

    def roots(self) -> dict[str, int]:
        """The pid at the top of each component's process tree, by :data:`COMPONENTS` name."""
        processes = {
            "proxy": self.system.proxy.popen,
            "manager": self.system.manager.popen,
            "workers": self.system.workers[-1].popen,
            "nats": self.nats.process,
            "redis": self.redis.process,
        }
        pids = {name: process.pid for name, process in processes.items() if process is not None}
        assert list(pids) == list(COMPONENTS), "every component runs"
        return pids

    def start(self) -> None:
        self.nats.start()
        self.redis.start()
        self.system.start(workers=0)
        self.start_workers(2)

    def start_workers(self, processes: int) -> None:
        """(Re)start ``eventing-worker`` with ``processes`` worker processes."""
        for worker in self.system.workers:
            worker.stop()
        self.system.add_worker(WORKER_PROCESSES=str(processes))
        time.sleep(2 + processes / 2)  # dramatiq's worker processes boot and connect

    def subscribe(self, count: int, *, signed: bool = False) -> None:
        """Replace the subscriptions with ``count`` of order.created.v1 to the sink; ``signed``:
        each delivery signed (Standard Webhooks) with a secret from a file beside them."""
        folder = self.system.subscriptions
        for path in folder.iterdir():
            path.unlink()
        sink_url = f"http://127.0.0.1:{self.sink_port}/"
        signing = ""
        if signed:
            (folder / "bench.whsec").write_text(
                f"whsec_{base64.b64encode(os.urandom(32)).decode()}"
            )
            signing = ", delivery: {signing: {secretFile: bench.whsec}}"
        documents = [
            "apiVersion: eventing.kyma-project.io/v1alpha2\nkind: Subscription\n"
            f"metadata: {{name: bench-{i}}}\n"
            f"spec: {{sink: '{sink_url}', source: bench, types: [order.created.v1],"
            f" config: {{maxInFlightMessages: '200'}}{signing}}}\n"
            for i in range(count)
        ]
        (folder / "bench.yaml").write_text("---\n".join(documents))

        def ready() -> bool:
            url = f"{self.system.manager_url}/subscriptions"
            with urllib.request.urlopen(url, timeout=5) as response:
                items = json.load(response)["items"]
            return len(items) == count and all(i["status"]["ready"] for i in items)

        wait_until(ready, 120, f"{count} subscriptions", interval=0.05)
        time.sleep(1.5)  # pull tasks bind to their new consumers

    def stop(self) -> None:
        self.system.stop()
        self.redis.stop()
        self.nats.stop()
