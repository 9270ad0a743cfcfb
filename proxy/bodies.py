"""Bodies first: every request body is read on granian's event loop before a thread sees it.

Why: under granian's WSGI interface a request gets a thread the moment its headers arrive, and
``wsgi.input.read()`` then blocks that thread until the client sends more. Granian has no body
timeout, and a thread blocked in that read cannot check one: 64 sockets trickling a byte every
few seconds held every thread and every turn to publish of both proxy processes, and all other
publishers got 503 for as long as the tricklers liked. So ``eventing-proxy`` serves the Flask
app through granian's RSGI interface instead, through :class:`BodiesFirst`: it reads the body
asynchronously (a slow client costs a connection and a coroutine, no thread), under a deadline
that grows with the bytes received (:func:`body_deadline`), answers 408 to a body that falls
behind, and hands only complete bodies to the WSGI app, on a pool of threads of its own.

A publishing view leaves its prepared events to the loop (:mod:`proxy.pending`): its thread
returns at once, and the loop publishes them and answers once JetStream acknowledged them, so a
request wakes a thread once instead of twice. A binary-mode ``POST /publish`` wakes none: the
same work is done on the loop, below Flask (:mod:`proxy.publishing`).

The WSGI environment is built as granian's WSGI interface builds it (header values that are not
visible ASCII become empty, repeated headers are joined with ``,``, cookies with ``;``).
"""

from __future__ import annotations

import asyncio
import io
import logging
import queue
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from eventing.errors import PublishError
from eventing.nats.messages import OutboundMessage
from proxy import admission, metrics, pending, problems
from proxy.metrics import ProxyMetrics

logger = logging.getLogger(__name__)

#: Seconds any body has before the minimum rate counts: a body sent with its headers arrives
#: at once, and a loaded event loop may be late to notice by a fraction of this.
GRACE = 2.0

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
#: Stores messages on the running loop, one outcome per message (None: stored).
Publish = Callable[[list[OutboundMessage]], Awaitable[list[PublishError | None]]]
#: Answers a request on the loop, below the WSGI app (None: the app answers it); its events
#: left to the loop (:meth:`proxy.publishing.Publishing.at_once`).
AtOnce = Callable[[dict[str, Any]], "pending.Answer | None"]


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """How long a request body may take, and how large it may be."""

    timeout: float  #: seconds from the headers to the body's last byte, at most
    min_rate: int  #: bytes per second a body must arrive at, on average, after GRACE
    max_size: int  #: bytes; one more is read so the app can answer 413


def body_deadline(started: float, received: int, limits: BodyLimits) -> float:
    """When the body must be complete, given the bytes received so far: GRACE seconds, one more
    second per ``min_rate`` bytes received, never beyond ``timeout`` (the rule of Apache's
    mod_reqtimeout ``MinRate``). A body that stops arriving is cut at GRACE seconds."""
    return started + min(limits.timeout, GRACE + received / limits.min_rate)


class Headers(Protocol):
    """What we use of granian's ``RSGIHeaders``."""

    def __iter__(self) -> Iterator[str]: ...

    def get_all(self, key: str) -> list[str]: ...

    def __contains__(self, key: str) -> bool: ...


class Scope(Protocol):
    """What we use of granian's RSGI HTTP scope."""

    proto: str
    http_version: str
    server: str
    client: str
    scheme: str
    method: str
    path: str
    query_string: str
    authority: str | None

    @property
    def headers(self) -> Headers: ...


class HTTPProtocol(Protocol):
    """What we use of granian's ``RSGIHTTPProtocol``."""

    def __aiter__(self) -> Any: ...

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None: ...


class BodiesFirst:
    """An RSGI application serving ``app`` (WSGI) on ``threads`` threads, bodies read first;
    the events its views defer are stored through ``publish`` (on this loop). A request
    ``at_once`` answers (binary-mode ``POST /publish``) never reaches a thread or ``app``."""

    def __init__(
        self,
        app: WSGIApp,
        *,
        threads: int,
        limits: BodyLimits,
        metrics: ProxyMetrics,
        on_loop: Callable[[asyncio.AbstractEventLoop], None] | None = None,
        publish: Publish | None = None,
        at_once: AtOnce | None = None,
    ) -> None:
        self._app = app
        self._publish = publish
        self._at_once = at_once
        self._threads = _Threads(threads, "proxy-request")
        self._limits = limits
        self._metrics = metrics
        self._on_loop = on_loop

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Granian's worker hands over its event loop before serving: ``on_loop`` gets it."""
        if self._on_loop is not None:
            self._on_loop(loop)

    async def __rsgi__(self, scope: Scope, protocol: HTTPProtocol) -> None:
        started = time.perf_counter()
        body = await self._read(scope, protocol)
        if body is None:
            self._answer_timeout(scope, protocol, started)
            return
        environ = _environ(scope, body)
        deferred = environ[pending.KEY] = pending.Pending() if self._publish else None
        handed = time.perf_counter()
        answer = self._at_once(environ) if self._at_once is not None else None
        if answer is None:
            answer = await self._threads.run(self._call, environ)
        status, headers, content = answer
        if deferred is not None and deferred.messages is not None:
            status, headers, content = await self._stored(deferred, (status, headers, content))
            self._metrics.observe_request(
                status, scope.method, environ.get(metrics.ROUTE, ""), handed
            )
        protocol.response_bytes(status, headers, content)

    async def _stored(self, deferred: pending.Pending, answer: pending.Answer) -> pending.Answer:
        """Publish the events the view deferred; the view's ``answer`` if all were stored, else
        the failure's. What the request held is released either way."""
        assert self._publish is not None and deferred.messages is not None
        try:
            outcomes = await self._publish(deferred.messages)
        except Exception as exc:  # the client hears of it, as from a view that raised
            logger.exception("publishing on the loop failed")
            outcomes = [PublishError(f"unexpected error: {exc}")] * len(deferred.messages)
        except BaseException:  # cancelled: what the request holds is released all the same
            deferred.settle([PublishError("cancelled")] * len(deferred.messages))
            raise
        return deferred.settle(outcomes) or answer

    async def _read(self, scope: Scope, protocol: HTTPProtocol) -> bytes | None:
        """The body (at most ``max_size + 1`` bytes), or None if it fell behind its deadline."""
        declared = _content_length(scope.headers)
        if declared is not None and declared > self._limits.max_size:
            return b""  # the app refuses it (413) from its Content-Length alone
        loop = asyncio.get_running_loop()
        started = loop.time()
        chunks: list[bytes] = []
        received = 0
        enough = self._limits.max_size + 1 if declared is None else declared
        if enough == 0:
            return b""
        try:
            async with asyncio.timeout_at(body_deadline(started, 0, self._limits)) as timer:
                async for chunk in protocol:
                    chunks.append(chunk)
                    received += len(chunk)
                    if received >= enough:  # no need to wait for the end of the stream
                        break
                    timer.reschedule(body_deadline(started, received, self._limits))
        except TimeoutError:
            return None
        return b"".join(chunks)

    def _call(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        """Run the WSGI app on one of our threads; its status, headers and whole body."""
        answer: list[Any] = [500, []]

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> None:
            answer[:] = [int(status.split(" ", 1)[0]), headers]

        chunks = self._app(environ, start_response)
        try:
            content = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return answer[0], answer[1], content

    def _answer_timeout(self, scope: Scope, protocol: HTTPProtocol, started: float) -> None:
        """408 in the endpoint's own error format; the connection closes (its body is unread).

        Counted here: the WSGI app, whose middleware counts every other answer, never sees it.
        """
        route = admission.publishing_route(scope.method, scope.path)
        detail = (
            f"the request body did not arrive in time: a body must arrive within"
            f" {self._limits.timeout:g} s (PROXY_BODY_TIMEOUT) and, after its first"
            f" {GRACE:g} s, at {self._limits.min_rate} bytes/s at least (PROXY_BODY_MIN_RATE)"
        )
        headers, content = problems.early_answer(
            route, 408, "Request Timeout", detail, {"Connection": "close"}
        )
        protocol.response_bytes(408, headers, content)
        self._metrics.observe_request(408, scope.method, route or "", started)


T = TypeVar("T")
A = TypeVar("A")


class _Threads:
    """Threads that run calls for the event loop. Why not ``run_in_executor``: its concurrent
    Future (a lock and a condition each) and the chaining of two futures cost the event loop,
    which every request passes through, a tenth of a request's time."""

    def __init__(self, count: int, name: str) -> None:
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for number in range(count):
            threading.Thread(target=self._serve, name=f"{name}-{number}", daemon=True).start()

    def run(self, function: Callable[[A], T], argument: A) -> asyncio.Future[T]:
        """``function(argument)`` on one of the threads; the future completes on this loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._work.put((loop, future, function, argument))
        return future

    def _serve(self) -> None:
        while True:
            loop, future, function, argument = self._work.get()
            try:
                result = function(argument)
            except BaseException as exc:  # handed to the awaiting coroutine, raised there
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _content_length(headers: Headers) -> int | None:
    values = headers.get_all("content-length")
    try:
        return int(values[0]) if values else None
    except ValueError:
        return None


#: The environ key of the whole body, read already.
BODY = "eventing.body"

_VERSIONS = {"1": "HTTP/1", "1.1": "HTTP/1.1", "2": "HTTP/2", "3": "HTTP/3"}


def _environ(scope: Scope, body: bytes) -> dict[str, Any]:
    """The WSGI environment granian's WSGI interface would build for this request."""
    server_host, _, server_port = scope.server.rpartition(":")
    environ: dict[str, Any] = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SCRIPT_NAME": "",
        "SERVER_SOFTWARE": "Granian",
        "SERVER_PROTOCOL": _VERSIONS.get(scope.http_version, "HTTP/1"),
        "SERVER_NAME": server_host.strip("[]"),
        "SERVER_PORT": server_port,
        "REMOTE_ADDR": scope.client.rpartition(":")[0].strip("[]"),
        "REQUEST_METHOD": scope.method,
        # RSGI decodes the path as UTF-8, WSGI wants the bytes as latin-1 (PEP 3333)
        "PATH_INFO": scope.path.encode().decode("latin-1"),
        "QUERY_STRING": scope.query_string,
        "wsgi.url_scheme": scope.scheme,
        "wsgi.input": io.BytesIO(body),
        BODY: body,  # the views read it from here, without Werkzeug's stream around it
        "wsgi.input_terminated": True,  # the stream ends where the body ends (Werkzeug reads it)
        "wsgi.errors": sys.stderr,
        "wsgi.multiprocess": False,
        "wsgi.multithread": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
    headers = scope.headers
    for key in headers:  # each name once
        values = headers.get_all(key)
        if key == "content-type":
            environ["CONTENT_TYPE"] = values[0] if values else ""
        elif key == "content-length":
            environ["CONTENT_LENGTH"] = values[0] if values else ""
        else:
            separator = ";" if key == "cookie" else ","
            environ["HTTP_" + key.upper().replace("-", "_")] = separator.join(values)
    if "host" not in headers:
        environ["HTTP_HOST"] = scope.authority or ""
    return environ
