"""End-to-end delivery: events/s and publish→sink latency, next to raw JetStream publish+pull+ack.

Run ``.venv/bin/python bench/e2e.py [--events 5000] [--rate 300] [--seconds 10]``; it needs
``redis-server`` and takes one to two minutes.

Method (everything on loopback, every process real, as ``honcho start`` runs them):

- A nats-server and a redis-server of our own, in temporary folders.
- Baseline, same run: raw nats-py in a process of its own publishes ``--events`` 1 KiB messages
  (pipelined, 256 in flight) to a stream with one durable pull consumer, while a second
  connection fetches batches and acks every message with a confirmed ack. Its rate is what
  JetStream alone does here for "store, hand out, acknowledge".
- The system: proxy (2 granian workers), manager, one ``eventing-worker`` (2 processes x 16
  threads) and a fast sink (asyncio, keep-alive, answers 204) in a process of its own.
  Subscriptions use ``maxInFlightMessages: "200"``.
- Saturated: the publisher (its own process) sends ``--events`` events in batch mode (50 per
  request, so the proxy is not what limits) as fast as it can; delivered/s = deliveries ÷ time
  from the first publish to the last delivery.
- Fixed rate: ``--rate`` single binary-mode events per second for ``--seconds``; latency is from
  just before the publish request to the sink's arrival, both stamped with the same clock.
- Both with 1 subscription, then with 10 subscriptions of the same type (each event delivered 10
  times: the fan-out path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue as queue_module
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

SCRIPTS = Path(sysconfig.get_path("scripts"))
PAYLOAD = b'{"pad": "' + b"x" * 1000 + b'"}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


# ---------------------------------------------------------------- baseline


def baseline(url: str, events: int, queue: Any) -> None:
    """Raw nats-py: pipelined publish with acks, pull in batches, confirmed ack of each."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy

    async def run() -> float:
        publisher, puller = await nats.connect(url), await nats.connect(url)
        js, js2 = publisher.jetstream(), puller.jetstream()
        await js.add_stream(name="BASE", subjects=["base.>"], retention=RetentionPolicy.INTEREST)
        await js.add_consumer(
            "BASE",
            ConsumerConfig(
                name="c", durable_name="c", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=1000
            ),
        )
        subscription = await js2.pull_subscribe_bind(durable="c", stream="BASE")
        done = asyncio.Event()
        acked = 0

        async def pull() -> None:
            nonlocal acked
            while acked < events:
                try:
                    messages = await subscription.fetch(200, timeout=1)
                except nats.errors.TimeoutError:
                    continue
                await asyncio.gather(*(m.ack_sync() for m in messages))
                acked += len(messages)
            done.set()

        started = time.perf_counter()
        puller_task = asyncio.create_task(pull())
        window = asyncio.Semaphore(256)

        async def publish(i: int) -> None:
            async with window:
                await js.publish("base.x", PAYLOAD)

        await asyncio.gather(*(publish(i) for i in range(events)))
        await done.wait()
        elapsed = time.perf_counter() - started
        await puller_task
        await publisher.close()
        await puller.close()
        return events / elapsed

    queue.put(asyncio.run(run()))


# ---------------------------------------------------------------- sink


def sink(port: int, queue: Any, stop: Any, counter: Any) -> None:
    """A fast keep-alive HTTP sink: answers 204 and records (arrival, sent-at) per event."""
    records: list[tuple[float, float]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length, sent = 0, 0.0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    lowered = name.strip().lower()
                    if lowered == b"content-length":
                        length = int(value)
                    elif lowered == b"ce-benchsent":
                        sent = float(value)
                if length:
                    await reader.readexactly(length)
                records.append((time.time(), sent))
                counter.value += 1
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        async with server:
            while not stop.is_set():
                await asyncio.sleep(0.1)

    asyncio.run(main())
    queue.put(records)


# ---------------------------------------------------------------- publisher


def publish_saturated(proxy: str, tag: str, events: int, queue: Any) -> None:
    """Batch mode, 50 events a request, 8 threads with keep-alive connections."""
    import http.client

    batch_size, threads = 50, 8
    batches = [range(i, min(i + batch_size, events)) for i in range(0, events, batch_size)]
    lock = threading.Lock()
    failures = 0

    def work(mine: list[range]) -> None:
        nonlocal failures
        host, port = proxy.split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        for batch in mine:
            body = json.dumps(
                [
                    {
                        "specversion": "1.0",
                        "id": f"{tag}-s{i}",
                        "source": "bench",
                        "type": "order.created.v1",
                        "datacontenttype": "application/json",
                        "benchsent": str(time.time()),
                        "data": {"pad": "x" * 1000},
                    }
                    for i in batch
                ]
            )
            connection.request(
                "POST", "/publish", body, {"Content-Type": "application/cloudevents-batch+json"}
            )
            response = connection.getresponse()
            response.read()
            if response.status != 204:
                with lock:
                    failures += len(batch)

    started = time.time()
    pool = [threading.Thread(target=work, args=(batches[t::threads],)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    queue.put((started, failures))


def publish_at_rate(proxy: str, tag: str, rate: int, seconds: float, queue: Any) -> None:
    """Single binary-mode events at a fixed rate, spread over 8 keep-alive connections."""
    import http.client

    threads = 8
    total = int(rate * seconds)
    start = time.monotonic() + 0.2
    failures = 0
    lock = threading.Lock()

    def work(offset: int) -> None:
        nonlocal failures
        host, port = proxy.split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        for i in range(offset, total, threads):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            headers = {
                "ce-specversion": "1.0",
                "ce-id": f"{tag}-r{i}",
                "ce-source": "bench",
                "ce-type": "order.created.v1",
                "ce-benchsent": repr(time.time()),
                "Content-Type": "application/json",
            }
            connection.request("POST", "/publish", PAYLOAD, headers)
            response = connection.getresponse()
            response.read()
            if response.status != 204:
                with lock:
                    failures += 1

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    queue.put(failures)


# ---------------------------------------------------------------- system


class System:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.nats_port, self.redis_port = free_port(), free_port()
        self.proxy_port, self.manager_port, self.sink_port = free_port(), free_port(), free_port()
        self.subscriptions = workdir / "subscriptions"
        self.subscriptions.mkdir()
        self.env = {
            **os.environ,
            "NATS_URL": f"nats://127.0.0.1:{self.nats_port}",
            "BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "SUBSCRIPTIONS_DIR": str(self.subscriptions),
            "INGRESS_PORT": str(self.proxy_port),
            "MANAGER_PORT": str(self.manager_port),
            "WORKER_METRICS_PORT": "0",
            "WORKER_PROCESSES": "2",
            "WORKER_THREADS": "16",
            "MAX_REQUEST_SIZE": "1Mi",
            "LOG_LEVEL": "warning",
        }

    def spawn(self, name: str, command: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )

    def start(self) -> None:
        redis = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.spawn(
            "nats",
            [
                str(SCRIPTS / "nats-server"),
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.nats_port),
                "-sd",
                str(self.workdir / "nats"),
            ],
        )
        self.spawn(
            "redis",
            [
                redis,
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
        )
        self.spawn("proxy", [str(SCRIPTS / "eventing-proxy")])
        self.spawn("manager", [str(SCRIPTS / "eventing-manager")])
        self.spawn("worker", [str(SCRIPTS / "eventing-worker")])
        wait_for(lambda: http_ok(f"http://127.0.0.1:{self.proxy_port}/readyz"), 30, "the proxy")
        wait_for(lambda: http_ok(f"http://127.0.0.1:{self.manager_port}/readyz"), 30, "the manager")
        time.sleep(2)  # dramatiq's worker processes boot

    def subscribe(self, count: int) -> None:
        for path in self.subscriptions.iterdir():
            path.unlink()
        sink_url = f"http://127.0.0.1:{self.sink_port}/"
        documents = [
            "apiVersion: eventing.kyma-project.io/v1alpha2\nkind: Subscription\n"
            f"metadata: {{name: bench-{i}}}\n"
            f"spec: {{sink: '{sink_url}', source: bench, types: [order.created.v1],"
            " config: {maxInFlightMessages: '200'}}\n"
            for i in range(count)
        ]
        (self.subscriptions / "bench.yaml").write_text("---\n".join(documents))

        def ready() -> bool:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.manager_port}/subscriptions", timeout=2
            ) as response:
                items = json.load(response)["items"]
            return len(items) == count and all(i["status"]["ready"] for i in items)

        wait_for(ready, 20, f"{count} subscriptions")
        time.sleep(1.5)  # pull tasks bind to their new consumers

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def measure(
    system: System, subscriptions: int, events: int, rate: int, seconds: float
) -> list[tuple[str, float, float | None, float | None, int]]:
    ctx = multiprocessing.get_context("spawn")
    rows = []
    system.subscribe(subscriptions)
    proxy = f"127.0.0.1:{system.proxy_port}"
    # JetStream stores a repeated (source, id) once: every scenario needs ids of its own.
    tag = f"{subscriptions}subs"

    # saturated
    expected = events * subscriptions
    records, started, failures = _with_sink(
        ctx,
        system.sink_port,
        publish_saturated,
        (proxy, tag, events),
        lambda count: count >= expected,
    )
    last = max(r[0] for r in records) if records else time.time()
    missing = failures + max(0, expected - len(records))
    rows.append(
        (
            f"{subscriptions} sub(s), saturated ({events} events)",
            len(records) / (last - started),
            None,
            None,
            missing,
        )
    )

    # fixed rate
    expected = int(rate * seconds) * subscriptions
    records, _, failures = _with_sink(
        ctx,
        system.sink_port,
        publish_at_rate,
        (proxy, tag, rate, seconds),
        lambda count: count >= expected,
    )
    latencies = sorted((arrival - sent) * 1000 for arrival, sent in records if sent)
    p50 = statistics.median(latencies) if latencies else None
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else None
    rows.append(
        (
            f"{subscriptions} sub(s), {rate} events/s",
            len(records) / seconds,
            p50,
            p99,
            failures + max(0, expected - len(records)),
        )
    )
    return rows


def _with_sink(
    ctx: Any, port: int, publisher: Any, arguments: tuple[Any, ...], enough: Any
) -> tuple[list[tuple[float, float]], float, int]:
    """Run a publisher process against a fresh sink process; wait until ``enough`` arrived
    (or nothing arrived for 15 s); return the sink's records, the publish start, failures."""
    queue, stop, counter = ctx.Queue(), ctx.Event(), ctx.Value("i", 0, lock=False)
    sink_process = ctx.Process(target=sink, args=(port, queue, stop, counter))
    sink_process.start()
    time.sleep(0.5)
    results = ctx.Queue()
    publishing = ctx.Process(target=publisher, args=(*arguments, results))
    started = time.time()
    publishing.start()
    while True:
        try:
            failures = results.get(timeout=1)
            break
        except queue_module.Empty:
            if not publishing.is_alive():
                stop.set()
                raise SystemExit("the publisher died (its traceback is above)") from None
    publishing.join()
    if isinstance(failures, tuple):
        started, failures = failures
    seen, quiet_since = -1, time.monotonic()
    while not enough(counter.value) and time.monotonic() - quiet_since < 15:
        if counter.value != seen:
            seen, quiet_since = counter.value, time.monotonic()
        time.sleep(0.2)
    stop.set()
    records = queue.get(timeout=60)
    sink_process.join()
    return records, started, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    # SIGTERM ends the run like Ctrl-C, so the processes below are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="eventing-bench-e2e-"))
    system = System(workdir)
    try:
        system.start()
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        process = ctx.Process(target=baseline, args=(system.env["NATS_URL"], args.events, queue))
        process.start()
        raw = queue.get(timeout=600)
        process.join()
        rows = measure(system, 1, args.events, args.rate, args.seconds)
        rows += measure(system, 10, args.events // 5, max(1, args.rate // 10), args.seconds)
    finally:
        system.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nmachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"baseline: raw nats-py publish (256 in flight) + pull + confirmed ack: {raw:,.0f}/s\n")
    columns = ("scenario", "delivered/s", "p50 ms", "p99 ms", "lost/failed", "vs raw")
    line = "{:<40} {:>12} {:>8} {:>8} {:>11} {:>7}"
    print(line.format(*columns))
    for name, rate, p50, p99, missing in rows:
        fifty = f"{p50:.1f}" if p50 is not None else "-"
        ninety_nine = f"{p99:.1f}" if p99 is not None else "-"
        print(line.format(name, f"{rate:,.0f}", fifty, ninety_nine, missing, f"{rate / raw:.2f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
