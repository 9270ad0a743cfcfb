"""Real HTTP sinks on loopback: one that records what it receives and answers as scripted
(:class:`RecordingSink`, for tests), and a fast one in a process of its own that only counts
and timestamps (:class:`FastSink`, for benchmarks, so the sink is never what limits)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from testing.servers import accepts_connections, free_port, wait_until


@dataclass(frozen=True)
class Delivery:
    """One request the sink received."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  #: time.monotonic() on arrival
    status: int  #: what the sink answered

    @property
    def event_id(self) -> str:
        return self.headers.get("ce-id", "")


@dataclass
class RecordingSink:
    """Records every request; ``answer`` picks the status (and may sleep) per request."""

    answer: Callable[[Request], int] = lambda request: 204
    #: the body of each answer (none by default)
    reply: Callable[[Request], bytes] = lambda request: b""
    deliveries: list[Delivery] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(
        self, environ: dict[str, object], start_response: Callable[..., object]
    ) -> Iterator[bytes]:
        request = Request(environ)
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            arrived = time.monotonic()
            body = request.get_data()
            status = self.answer(request)
            with self._lock:
                self.deliveries.append(
                    Delivery(
                        request.path,
                        {k.lower(): v for k, v in request.headers.items()},
                        body,
                        arrived,
                        status,
                    )
                )
        finally:
            with self._lock:
                self.in_flight -= 1
        response = Response(self.reply(request), status=status)
        return response(environ, start_response)  # type: ignore[no-any-return]

    def received(self, status: int | None = 204) -> list[Delivery]:
        """Deliveries answered with ``status`` (None: all)."""
        with self._lock:
            return [d for d in self.deliveries if status is None or d.status == status]

    def ids(self, status: int | None = 204) -> list[str]:
        return [d.event_id for d in self.received(status)]


class SinkServer:
    """Serves a :class:`RecordingSink` on a free loopback port, threaded."""

    def __init__(
        self, sink: RecordingSink, port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.sink = sink
        self._ssl_context = ssl_context  #: serves https (and may require client certificates)
        # A port of free_port's (not the kernel's pick): never one handed out to a process that
        # has yet to bind it, nor one a test uses as a port nothing listens on.
        port = port or free_port()
        self._server = make_server("127.0.0.1", port, sink, threaded=True, ssl_context=ssl_context)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://127.0.0.1:{self.port}/events"

    def start(self) -> SinkServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: connections to the port are refused until :meth:`restart`."""
        self._server.shutdown()
        self._server.server_close()

    def restart(self) -> SinkServer:
        """Serve the same sink on the same port again after :meth:`stop` (a sink coming back)."""
        self._server = make_server(
            "127.0.0.1", self.port, self.sink, threaded=True, ssl_context=self._ssl_context
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        return self.start()


@dataclass(frozen=True)
class Arrival:
    """One request the fast sink answered."""

    at: float  #: time.time() on arrival
    event_id: str  #: its ce-id, percent-decoded
    sent: float  #: its ce-benchsent (a publisher's time.time()), 0.0 without one


class FastSink:
    """A keep-alive asyncio HTTP/1.1 sink in a spawned process: answers 204 to everything.

    While it runs, :attr:`deliveries` and :attr:`distinct` count requests and distinct ids;
    :meth:`stop` ends it and hands over every :class:`Arrival`. Use as a context manager.
    """

    def __init__(self, port: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._deliveries, self._distinct = context.Value("q", 0), context.Value("q", 0)
        self._stop, self._arrivals = context.Event(), context.Queue()
        self._process = context.Process(
            target=_serve_fast_sink,
            args=(port, self._deliveries, self._distinct, self._stop, self._arrivals),
            daemon=True,
        )
        self.port = port

    def __enter__(self) -> FastSink:
        self._process.start()
        wait_until(lambda: accepts_connections(self.port), 20, "the fast sink")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    @property
    def pid(self) -> int | None:
        """The sink process's pid while it runs (a benchmark counts its CPU apart)."""
        return self._process.pid

    @property
    def deliveries(self) -> int:
        return int(self._deliveries.value)

    @property
    def distinct(self) -> int:
        return int(self._distinct.value)

    def stop(self) -> list[Arrival]:
        """Stop serving and return every arrival, in order."""
        self._stop.set()
        arrivals: list[Arrival] = self._arrivals.get(timeout=60)
        self._process.join(10)
        return arrivals


def _serve_fast_sink(port: int, deliveries: Any, distinct: Any, stop: Any, out: Any) -> None:
    """(child process) The body of :class:`FastSink`."""
    arrivals: list[Arrival] = []
    seen: set[str] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # CancelledError: the sink is stopping, with connections still open
        with contextlib.suppress(
            asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError
        ):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length, event_id, sent = 0, "", 0.0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    lowered = name.strip().lower()
                    if lowered == b"content-length":
                        length = int(value)
                    elif lowered == b"ce-id":
                        event_id = unquote(value.strip().decode())
                    elif lowered == b"ce-benchsent":
                        sent = float(value)
                await reader.readexactly(length)
                arrivals.append(Arrival(time.time(), event_id, sent))
                seen.add(event_id)
                deliveries.value, distinct.value = len(arrivals), len(seen)
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        async with server:
            while not stop.is_set():
                await asyncio.sleep(0.1)

    asyncio.run(main())
    out.put(arrivals)


class Sinks:
    """Recording sinks a test starts as it goes, each answering one status (and body), all
    stopped together at its end (the ``sinks`` fixture)."""

    def __init__(self) -> None:
        self.started: list[SinkServer] = []

    def start(self, status: int = 204, reply: bytes = b"") -> SinkServer:
        server = SinkServer(RecordingSink(lambda request: status, lambda request: reply)).start()
        self.started.append(server)
        return server

    def stop(self) -> None:
        for server in self.started:
            server.stop()
