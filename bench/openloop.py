"""The open-loop load of :mod:`bench.overload`: requests due at fixed times whatever the
answers, over at most ``connections`` keep-alive connections, in phases of their own rate.

Why open loop: :mod:`bench.overload`'s docstring. It runs in a process of its own
(:func:`offer`), on asyncio with raw HTTP/1.1 on the streams, so that many requests are in
flight at once without a thread each. Each :class:`Sample` keeps when its request was due, so a
late answer counts from then.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

TIMEOUT = 20.0  #: the client gives up on a request after this long
#: Closed-loop connections of the capacity run: enough to keep both proxy workers busy, few
#: enough (24 a worker) that their turns to publish (32 a worker, proxy.admission) never run out
CAPACITY_CONNECTIONS = 48
SOURCE, TYPE = "overload", "order.created.v1"
DATA = b'{"orderId": 42, "note": "' + b"x" * 60 + b'"}'


@dataclass(frozen=True, slots=True)
class Phase:
    name: str  #: its first word is unique: event ids carry it
    seconds: float
    rate: float | None  #: requests/s offered; None: a closed loop on CAPACITY_CONNECTIONS

    @property
    def key(self) -> str:
        return self.name.split()[0]


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: when it was due (s since the load began) and what came back."""

    phase: str
    event_id: str
    due: float
    latency: float | None  #: from due to the end of the answer (None: no answer)
    status: int | None
    retry_after: bool
    #: from due to sent: the client's own delay, waiting for a free connection (or a core)
    lag: float | None = None
    error: str | None = None  #: why there is no answer


class _Connections:
    """Keep-alive connections, at most ``limit`` in use; callers beyond it wait their turn."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self._host, self._port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(limit)

    @contextlib.asynccontextmanager
    async def connection(self) -> Any:
        async with self._slots:
            pair = self._idle.pop() if self._idle else None
            if pair is None:
                pair = await asyncio.open_connection(self._host, self._port, limit=1 << 20)
            try:
                yield pair
            except BaseException:
                pair[1].close()
                raise
            self._idle.append(pair)


def _request(event_id: str) -> bytes:
    return (
        b"POST /publish HTTP/1.1\r\nHost: proxy\r\nce-specversion: 1.0\r\nce-id: %s\r\n"
        b"ce-source: %s\r\nce-type: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s"
    ) % (event_id.encode(), SOURCE.encode(), TYPE.encode(), len(DATA), DATA)


async def _exchange(pool: _Connections, event_id: str) -> tuple[int, bool, float]:
    """Status, whether Retry-After came along, and when the request went out (loop time)."""
    async with pool.connection() as (reader, writer):
        writer.write(_request(event_id))
        sent = asyncio.get_running_loop().time()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:] if line)
        }
        await reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            raise ConnectionResetError("the proxy closed the connection")  # not reusable
        return status, "retry-after" in headers, sent


async def _one(pool: _Connections, phase: str, event_id: str, due: float, t0: float) -> Sample:
    loop = asyncio.get_running_loop()
    try:
        status, retry_after, sent = await asyncio.wait_for(_exchange(pool, event_id), TIMEOUT)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
        return Sample(phase, event_id, due - t0, None, None, False, None, type(exc).__name__)
    return Sample(phase, event_id, due - t0, loop.time() - due, status, retry_after, sent - due)


async def _closed_loop(pool: _Connections, phase: Phase, t0: float, tag: str) -> list[Sample]:
    loop = asyncio.get_running_loop()
    end = loop.time() + phase.seconds
    counter = iter(range(10**9))

    async def worker() -> list[Sample]:
        mine = []
        while loop.time() < end:
            event_id = f"{tag}-{phase.key}-{next(counter)}"
            mine.append(await _one(pool, phase.name, event_id, loop.time(), t0))
        return mine

    results = await asyncio.gather(*(worker() for _ in range(CAPACITY_CONNECTIONS)))
    return [sample for samples in results for sample in samples]


async def _open_loop(pool: _Connections, phase: Phase, t0: float, tag: str) -> list[Sample]:
    """Request ``i`` of the phase is due at ``start + i / rate``, whatever came back so far."""
    assert phase.rate is not None
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for i in range(int(phase.rate * phase.seconds)):
        due = start + i / phase.rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        event_id = f"{tag}-{phase.key}-{i}"
        tasks.append(asyncio.create_task(_one(pool, phase.name, event_id, due, t0)))
    return list(await asyncio.gather(*tasks))


def offer(url: str, phases: list[Phase], connections: int, tag: str) -> list[Sample]:
    """(load process) Run the phases one after the other; every request's sample."""

    async def run() -> list[Sample]:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        pool = _Connections(host, int(port), connections)
        t0 = asyncio.get_running_loop().time()
        samples: list[Sample] = []
        for phase in phases:
            if phase.rate is None:
                samples += await _closed_loop(pool, phase, t0, tag)
            else:
                samples += await _open_loop(pool, phase, t0, tag)
        return samples

    return asyncio.run(run())
