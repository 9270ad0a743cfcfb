"""Sinks that misbehave on purpose cannot hold a worker: redirects, silence, endless or trickled
answers. Each case runs twice: one delivery job over real loopback sockets (timed, and with its
memory traced), then the whole system with a real worker, dead-letter stream included."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from eventing.delivery.steps import DeadLetter
from testing.servers import NatsServer, RedisServer, wait_until
from testing.sink import SinkServer
from testing.system import System
from tests.conftest import stop_showing_logs
from tests.integration.conftest import read_stream
from tests.workers.conftest import POLICY, Clock, MemoryLog, make_job
from workers import attempts, deadline
from workers.attempts import Delivered

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
TIMEOUT = 1.0  # the subscriptions' delivery timeout: the hard limit of every attempt
FAST = replace(POLICY, retry=1, timeout=TIMEOUT)  # two attempts, no real waits (a fake sleep)


@dataclass
class Hit:
    """One request the hostile sink received, and how much answer it got out."""

    path: str
    at: float  #: time.monotonic() on arrival
    sent: int = 0  #: body bytes written before the client went away or the test ended

    def send_body(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        self.sent += len(data)


Behaviour = Callable[[socket.socket, Hit, threading.Event], None]


def answer(status: int, *headers: str) -> Behaviour:
    def behave(conn: socket.socket, hit: Hit, stopping: threading.Event) -> None:
        lines = "".join(f"{header}\r\n" for header in headers)
        head = f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n{lines}\r\n"
        conn.sendall(head.encode())

    return behave


def hang(conn: socket.socket, hit: Hit, stopping: threading.Event) -> None:
    stopping.wait()


def huge(status: int, size: int) -> Behaviour:
    """A body of ``size`` bytes, written as fast as the client takes it."""

    def behave(conn: socket.socket, hit: Hit, stopping: threading.Event) -> None:
        conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: {size}\r\n\r\n".encode())
        chunk = bytes(64 * 1024)
        while hit.sent < size and not stopping.is_set():
            hit.send_body(conn, chunk)

    return behave


def endless(status: int) -> Behaviour:
    """A chunked body that never ends."""

    def behave(conn: socket.socket, hit: Hit, stopping: threading.Event) -> None:
        conn.sendall(f"HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"10000\r\n" + bytes(0x10000) + b"\r\n"
        while not stopping.is_set():
            hit.send_body(conn, chunk)

    return behave


def trickle_body(status: int, every: float = 0.5) -> Behaviour:
    """Headers at once, then a byte of body every ``every`` seconds: each read beats a timeout."""

    def behave(conn: socket.socket, hit: Hit, stopping: threading.Event) -> None:
        conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: 1000000\r\n\r\n".encode())
        while not stopping.wait(every):
            hit.send_body(conn, b"x")

    return behave


def trickle_headers(every: float = 0.2) -> Behaviour:
    """A 200 status line, then a header that never ends, a byte every ``every`` seconds."""

    def behave(conn: socket.socket, hit: Hit, stopping: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while not stopping.wait(every):
            conn.sendall(b"a")

    return behave


def stall(status: int) -> Behaviour:
    """Headers promising a body, then silence."""

    def behave(conn: socket.socket, hit: Hit, stopping: threading.Event) -> None:
        conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: 1000\r\n\r\n".encode())
        stopping.wait()

    return behave


def truncated(status: int) -> Behaviour:
    """Headers promising 1000 bytes, 10 of them, then the connection closes."""

    def behave(conn: socket.socket, hit: Hit, stopping: threading.Event) -> None:
        conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: 1000\r\n\r\n".encode())
        hit.send_body(conn, bytes(10))

    return behave


class HostileSink:
    """A raw HTTP/1.1 server on loopback: reads each request, then behaves as its path says."""

    def __init__(self, behaviours: dict[str, Behaviour]) -> None:
        self.behaviours = behaviours
        self.stopping = threading.Event()
        self._hits: list[Hit] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sink._serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hits(self, path: str | None = None) -> list[Hit]:
        with self._lock:
            return [hit for hit in self._hits if path is None or hit.path == path]

    def start(self) -> HostileSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        request_line = reader.readline(65537)
        if not request_line:
            return
        path = request_line.split()[1].decode()
        length = 0
        while (line := reader.readline(65537)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        reader.read(length)
        hit = Hit(path, time.monotonic())
        with self._lock:
            self._hits.append(hit)
        with contextlib.suppress(OSError):  # the client went away: what a hostile sink outlasts
            self.behaviours[path](conn, hit, self.stopping)


BEHAVIOURS: dict[str, Behaviour] = {
    "/ok": answer(204),
    "/target": answer(204),
    "/moved-301": answer(301, "Location: /target"),
    "/found-302": answer(302, "Location: /target"),
    "/temporary-307": answer(307, "Location: /target"),
    "/loop": answer(302, "Location: /loop"),
    "/hang": hang,
    "/huge-200": huge(200, 100 * MiB),
    "/endless-500": endless(500),
    "/trickle-body-200": trickle_body(200),
    "/trickle-body-503": trickle_body(503),
    "/trickle-headers": trickle_headers(),
    "/stall-200": stall(200),
    "/truncated-200": truncated(200),
}


@pytest.fixture
def hostile() -> Iterator[HostileSink]:
    sink = HostileSink(BEHAVIOURS).start()
    yield sink
    sink.stop()


def deliver_once(hostile: HostileSink, path: str) -> tuple[attempts.Outcome, float]:
    """One delivery job (two attempts at most, no backoff) over real sockets; outcome, seconds."""
    started = time.monotonic()
    outcome = attempts.run(
        make_job(sink=hostile.url(path), policy=FAST),
        deadline.session(),
        extra_deliveries=2,
        keepalive=lambda: None,
        log=MemoryLog(),
        sleep=Clock(),
    )
    return outcome, time.monotonic() - started


@pytest.mark.parametrize(
    ("path", "status"),
    [("/moved-301", 301), ("/found-302", 302), ("/temporary-307", 307), ("/loop", 302)],
)
def test_redirects_are_never_followed_and_dead_letter_at_once(
    hostile: HostileSink, path: str, status: int
) -> None:
    outcome, seconds = deliver_once(hostile, path)
    assert isinstance(outcome, DeadLetter)
    assert (outcome.status, outcome.attempts) == (status, 1)
    assert "redirect" in outcome.reason
    assert [hit.path for hit in hostile.hits()] == [path]
    assert seconds < 2


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/hang", None),
        ("/trickle-headers", None),
        ("/trickle-body-503", 503),
        ("/endless-500", 500),
    ],
)
def test_every_attempt_ends_within_the_timeout_however_the_sink_stalls(
    hostile: HostileSink, path: str, status: int | None
) -> None:
    outcome, seconds = deliver_once(hostile, path)
    assert isinstance(outcome, DeadLetter), outcome
    assert (outcome.status, outcome.attempts) == (status, 2)
    if status is None:  # headers never complete: a 200 status line alone is no answer
        assert f"no complete answer within {TIMEOUT:g}s" in outcome.reason
    assert len(hostile.hits(path)) == 2
    assert seconds < 2 * TIMEOUT + 2.5  # two attempts, each cut off at the timeout at the latest


@pytest.mark.parametrize("path", ["/trickle-body-200", "/stall-200", "/truncated-200"])
def test_a_success_status_counts_whatever_the_body_does(hostile: HostileSink, path: str) -> None:
    outcome, seconds = deliver_once(hostile, path)
    assert outcome == Delivered(200, 1)
    assert seconds < TIMEOUT + 2


@pytest.mark.parametrize(
    ("path", "status", "attempts"), [("/huge-200", 200, 1), ("/endless-500", 500, 2)]
)
def test_a_huge_answer_is_read_64_kib_far_without_buffering(
    hostile: HostileSink, path: str, status: int, attempts: int
) -> None:
    deliver_once(hostile, "/ok")  # warm-up: lazy imports and the first session are not the job's
    tracemalloc.start()
    try:
        outcome, seconds = deliver_once(hostile, path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(outcome, Delivered | DeadLetter)
    assert (outcome.status, outcome.attempts) == (status, attempts)
    assert peak < 4 * MiB, f"{peak / MiB:.1f} MiB"
    assert seconds < 3  # 64 KiB and done, no deadline needed
    wait_until(lambda: all(hit.sent for hit in hostile.hits(path)), 5, "the sink to write")
    # What the sink got out is the 64 KiB read plus whatever the sockets' buffers took.
    assert all(hit.sent < 32 * MiB for hit in hostile.hits(path))


def test_the_whole_system_shrugs_off_hostile_sinks(
    nats_server: NatsServer,
    redis_server: RedisServer,
    tmp_path: Path,
    hostile: HostileSink,
    sink_server: SinkServer,
    request: pytest.FixtureRequest,
) -> None:
    """A real worker: the hostile sinks end in the dead-letter stream (or are delivered) within
    their timeouts, and a well-behaved sink keeps getting events meanwhile and afterwards."""
    outcomes = {  # path: expected dead-letter (status, attempts), or None when delivered
        "/moved-301": ("301", "1"),
        "/loop": ("302", "1"),
        "/hang": ("", "2"),
        "/trickle-headers": ("", "2"),
        "/trickle-body-503": ("503", "2"),
        "/endless-500": ("500", "2"),
        "/huge-200": None,
        "/trickle-body-200": None,
    }
    system = System(nats_server, redis_server, tmp_path, WORKER_THREADS="4").start()
    try:
        policy = {"retry": 1, "backoffDelay": "PT0.2S", "timeout": "PT1S"}
        for path in [*outcomes, "healthy"]:
            sink = sink_server.url if path == "healthy" else hostile.url(path)
            system.subscribe(
                path.strip("/"),
                {"sink": sink, "source": "shop", "types": ["order.created.v1"], "delivery": policy},
            )
        published = time.monotonic()
        assert system.publish_binary("hostile-1", "shop", "order.created.v1").status_code == 204
        letters = sum(1 for expected in outcomes.values() if expected)

        wait_until(
            lambda: len(read_stream(nats_server, "sap-dlq")) == letters,
            30,
            f"{letters} dead letters\n{system.logs()}",
        )
        settled_after = time.monotonic() - published
        by_subscription = {
            letter.headers["Eventing-Dead-Letter-Subscription"]: letter.headers
            for letter in read_stream(nats_server, "sap-dlq")
        }
        for path, expected in outcomes.items():
            name = f"default/{path.strip('/')}"
            if expected is None:
                wait_until(
                    lambda n=name: f"delivered {n} " in system.workers[0].log(), 10, f"{name} acked"
                )
                assert name not in by_subscription
            else:
                headers = by_subscription[name]
                status, attempts = expected
                got = (
                    headers["Eventing-Dead-Letter-Status"],
                    headers["Eventing-Dead-Letter-Attempts"],
                )
                assert got == (status, attempts), (name, headers)
                assert len(hostile.hits(path)) == int(attempts)
        # 4 threads, 2 attempts of 1 s at most per hostile sink, 6 such sinks: a few seconds.
        assert settled_after < 20, settled_after
        assert hostile.hits("/target") == []
        assert sink_server.sink.ids() == ["hostile-1"]

        assert system.publish_binary("after-1", "shop", "order.created.v1").status_code == 204
        wait_until(lambda: "after-1" in sink_server.sink.ids(), 10, "the healthy sink served")
    finally:
        stop_showing_logs(request, system)
