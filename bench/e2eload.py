"""The load of the end-to-end suites (:mod:`bench.e2e`): raw nats-py JetStream as the
baseline, a saturating batch publisher and a paced one, each run in a process of its own that
puts its result on a queue.

The publishers stamp each event with the time it was sent (``benchsent``), so the sink can
tell publish→sink latency.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

PAYLOAD = b'{"pad": "' + b"x" * 1000 + b'"}'
BATCH_SIZE = 50


@dataclass(frozen=True)
class Raw:
    """Raw nats-py JetStream rates on this machine, this run."""

    publish: float  #: messages/s published with PubAcks, 256 in flight
    pull_ack: float  #: messages/s fetched and acked (confirmed) from a durable pull consumer


def baseline(url: str, events: int, results: Any) -> None:
    """(child process) Raw nats-py: pipelined publish with acks, then pull + confirmed ack."""
    import nats
    import nats.errors
    from nats.js.api import AckPolicy, ConsumerConfig

    async def run() -> Raw:
        publisher, puller = await nats.connect(url), await nats.connect(url)
        js = publisher.jetstream()
        await js.add_stream(name="BASE", subjects=["base.>"])
        await js.add_consumer(
            "BASE",
            ConsumerConfig(
                name="c", durable_name="c", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=1000
            ),
        )
        window = asyncio.Semaphore(256)

        async def publish(i: int) -> None:
            async with window:
                await js.publish("base.x", PAYLOAD, headers={"Nats-Msg-Id": f"raw-{i}"})

        started = time.perf_counter()
        await asyncio.gather(*(publish(i) for i in range(events)))
        published = events / (time.perf_counter() - started)

        subscription = await puller.jetstream().pull_subscribe_bind(durable="c", stream="BASE")
        acked = 0
        started = time.perf_counter()
        while acked < events:
            try:
                messages = await subscription.fetch(200, timeout=1)
            except nats.errors.TimeoutError:
                continue
            await asyncio.gather(*(m.ack_sync() for m in messages))
            acked += len(messages)
        pulled = events / (time.perf_counter() - started)
        await js.delete_stream("BASE")
        await publisher.close()
        await puller.close()
        return Raw(published, pulled)

    results.put(asyncio.run(run()))


@dataclass(frozen=True)
class Published:
    started: float  #: time.time() of the first request
    failures: int  #: events not accepted (non-2xx or no answer)
    latencies: list[float]  #: seconds per request


def publish_saturated(proxy: str, tag: str, events: int, batch_size: int, results: Any) -> None:
    """(child process) 8 threads on keep-alive connections, as fast as the proxy answers: batch
    mode with ``batch_size`` events a request, or single binary-mode events when it is 1 (the
    load of issue 16's comparison with Kyma: wrk, 8 connections)."""
    threads = 8
    batches = [range(i, min(i + batch_size, events)) for i in range(0, events, batch_size)]
    latencies: list[float] = []
    failures: list[int] = []

    def request(batch: range) -> tuple[bytes, dict[str, str]]:
        if batch_size == 1:
            return PAYLOAD, {**_binary_headers(f"{tag}-s{batch[0]}"), "ce-benchsent": _now()}
        body = json.dumps(
            [
                {
                    "specversion": "1.0",
                    "id": f"{tag}-s{i}",
                    "source": "bench",
                    "type": "order.created.v1",
                    "datacontenttype": "application/json",
                    "benchsent": _now(),
                    "data": {"pad": "x" * 1000},
                }
                for i in batch
            ]
        )
        return body.encode(), {"Content-Type": "application/cloudevents-batch+json"}

    def work(mine: list[range]) -> None:
        host, port = proxy.split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        for batch in mine:
            body, headers = request(batch)
            sent = time.perf_counter()
            connection.request("POST", "/publish", body, headers)
            response = connection.getresponse()
            response.read()
            latencies.append(time.perf_counter() - sent)
            if response.status != 204:
                failures.append(len(batch))

    started = time.time()
    pool = [threading.Thread(target=work, args=(batches[t::threads],)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    results.put(Published(started, sum(failures), latencies))


def _binary_headers(event_id: str) -> dict[str, str]:
    """The headers of a binary-mode bench event (its data: :data:`PAYLOAD`)."""
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "bench",
        "ce-type": "order.created.v1",
        "Content-Type": "application/json",
    }


def _now() -> str:
    """The send time the sink reads back (``benchsent``) for publish→sink latency."""
    return repr(time.time())


def publish_at_rate(proxy: str, tag: str, rate: int, seconds: float, results: Any) -> None:
    """(child process) Single binary-mode events at ``rate``/s: request ``n`` is due at
    ``start + n / rate``, sent then by the next free thread, its latency counted from then."""
    total = int(rate * seconds)
    tickets = itertools.count()  # next() is atomic under the GIL
    latencies: list[float] = []
    failures: list[int] = []
    started = time.time() + 0.2
    start = time.perf_counter() + 0.2

    def work() -> None:
        host, port = proxy.split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        while (ticket := next(tickets)) < total:
            due = start + ticket / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            headers = {**_binary_headers(f"{tag}-r{ticket}"), "ce-benchsent": _now()}
            try:
                connection.request("POST", "/publish", PAYLOAD, headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                failures.append(ticket)
                continue
            latencies.append(time.perf_counter() - due)
            if response.status != 204:
                failures.append(ticket)

    pool = [threading.Thread(target=work) for _ in range(16)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    results.put(Published(started, len(failures), latencies))
