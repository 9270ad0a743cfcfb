"""Hard deadlines for HTTP attempts: no sink holds a delivery thread longer than its timeout.

requests' timeout bounds each socket operation, not the request: a sink that trickles its answer
a byte at a time, each byte within the timeout, would hold a delivery thread (and its JetStream
message, past the ack wait) for as long as it likes. Sessions made by :func:`session` register
every socket they use with the deadline of the attempt under way (:func:`within`); one watchdog
thread per process shuts a socket down when its attempt's deadline passes, which ends a read or
write blocked on it at once. Outside :func:`within` such a session behaves like any other.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import requests
from requests.adapters import DEFAULT_POOLSIZE, HTTPAdapter
from urllib3.connectionpool import ConnectionPool, HTTPConnectionPool, HTTPSConnectionPool

from workers.egress import GuardedHTTPConnection, GuardedHTTPSConnection

_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "eventing_deadline", default=None
)


class Deadline:
    """The end of one attempt; its sockets are shut down when it passes."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.expired = False  #: the deadline passed while the attempt was under way
        self._done = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self._done:
                return
            if self.expired:
                _shutdown(sock)
            elif sock not in self._sockets:
                self._sockets.append(sock)

    def expire(self) -> None:
        """Called by the watchdog: cut the attempt off, unless it ended already."""
        with self._lock:
            if self._done:
                return
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)

    def finish(self) -> None:
        """The attempt is over: its sockets (back in the pool, maybe) are no longer watched."""
        with self._lock:
            self._done = True
            self._sockets.clear()

    @property
    def done(self) -> bool:
        return self._done


class _Watchdog:
    """One thread that expires deadlines in time order; started lazily, so after a fork too."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: Deadline) -> None:
        with self._changed:
            heapq.heappush(self._due, (deadline.at, next(self._order), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="eventing-deadlines", daemon=True
                )
                self._thread.start()
            if self._due[0][2] is deadline:
                self._changed.notify()

    def hurry(self, seconds: float) -> None:
        """Bring every deadline still under way forward to at most ``seconds`` from now."""
        with self._changed:
            soon = time.monotonic() + seconds
            for at, _, deadline in list(self._due):
                if not deadline.done and at > soon:
                    heapq.heappush(self._due, (soon, next(self._order), deadline))
            self._changed.notify()

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                while self._due and (self._due[0][2].done or self._due[0][0] <= now):
                    heapq.heappop(self._due)[2].expire()
                self._changed.wait(self._due[0][0] - now if self._due else None)


_WATCHDOG = _Watchdog()


@contextlib.contextmanager
def within(seconds: float) -> Iterator[Deadline]:
    """Cut off whatever a :func:`session` does in this block ``seconds`` after it began.

    A cut-off request or read fails as the connection dropping would; ``Deadline.expired`` tells
    the two apart.
    """
    deadline = Deadline(seconds)
    token = _current.set(deadline)
    _WATCHDOG.arm(deadline)
    try:
        yield deadline
    finally:
        deadline.finish()
        _current.reset(token)


def hurry(seconds: float) -> None:
    """Cut off every attempt under way in this process at most ``seconds`` from now (the
    worker is stopping, and honcho kills what is left 5 s after SIGTERM)."""
    _WATCHDOG.hurry(seconds)


def session() -> requests.Session:
    """A session for sinks: its sockets obey :func:`within`, and it ignores proxy settings."""
    http = requests.Session()
    # Looking up proxy and netrc settings in the environment on every request was the largest
    # single cost of a delivery (profiled); sinks are reached directly.
    http.trust_env = False
    adapter = _DeadlineAdapter()
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http


def _watch(sock: socket.socket | None) -> None:
    deadline = _current.get()
    if deadline is not None and sock is not None:
        deadline.watch(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already: nothing left to cut off
        sock.shutdown(socket.SHUT_RDWR)


class _WatchedHTTPConnection(GuardedHTTPConnection):
    def connect(self) -> None:
        super().connect()
        _watch(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self.sock)  # a pooled connection, reused: connect() is not called again
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(GuardedHTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _watch(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self.sock)
        super().request(*args, **kwargs)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    """An adapter whose sockets obey :func:`within`, and that finds a sink's connection pool
    once, not per request (requests builds the pool's key anew every time: parsing the URL,
    normalising a dozen settings; 3 % of a worker's CPU).

    A session is one delivery thread's (``workers.actors``), so the pools it keeps are used by
    that thread alone. It keeps as many as the pool manager does (``DEFAULT_POOLSIZE``), then
    forgets them all: a pool the manager let go is gone once this forgets it too.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pools: dict[tuple[str, Any, Any], HTTPConnectionPool] = {}

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: Any,
        proxies: Mapping[str, str] | None = None,
        cert: Any = None,
    ) -> ConnectionPool:
        if proxies or request.url is None:  # sessions of ours have none: trust_env is off
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        key = (request.url, verify, cert)
        known = self._pools.get(key)
        if known is not None:
            return known
        pool = super().get_connection_with_tls_context(request, verify, proxies, cert)
        if isinstance(pool, HTTPConnectionPool):
            if len(self._pools) >= DEFAULT_POOLSIZE:  # the pool manager's own size here
                self._pools.clear()
            self._pools[key] = pool
        return pool

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }
