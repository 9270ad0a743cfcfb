"""Admission: how many publishing requests one proxy process works on, and what the rest get.

Why: granian hands requests to a fixed pool of threads and queues the rest however long they
wait, so an overloaded proxy answered nothing quickly: at twice its capacity, requests waited
10 s and more for a thread, and ``PROXY_MAX_IN_FLIGHT`` (counted in events) was never reached
by single-event requests, 32 threads being far fewer than 1,000 events. Now at most ``slots``
requests publish at once, a burst of at most ``waiting`` more waits up to ``patience`` seconds
for a turn, and any other request is answered 503 with ``Retry-After`` at once.
``eventing-proxy`` gives the app threads for all three groups (:func:`thread_count`), so the
503s come from threads that are free.

The check is a WSGI middleware in front of Flask and answers by itself: a refusal must cost far
less than a publish, or refusing cannot keep up with the load it refuses (through Flask, with
a log line each, a 503 cost two thirds of a publish; here it costs a tenth of that). It reads
nothing of the request but its method and path.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from eventing.errors import Overloaded

if TYPE_CHECKING:  # importing prometheus_client fixes its mode: only create_app may do so
    from proxy.metrics import ProxyMetrics

logger = logging.getLogger(__name__)

#: Seconds a request may wait for a slot: many publishes' time, so bursts pass, and about what a
#: refused client waits before it retries (PROXY_RETRY_AFTER's default); far below any client's
#: timeout. At twice the sustainable rate, 1 s with a waiting room as large as the slots stored
#: about a fifth more than 0.5 s with half of it (bench/overload.py), at a p99 under 0.5 s both.
PATIENCE = 1.0
#: Seconds between two log lines about refused requests (a line each would flood the log
#: exactly when the process is short of time).
_LOG_INTERVAL = 10.0

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def waiting_room(slots: int) -> int:
    """How many requests may wait for one of ``slots``."""
    return slots


def thread_count(slots: int) -> int:
    """Threads a process needs: ``slots``, the waiting room, and at least as many again free to
    answer 503 while all the others are taken."""
    return slots + 2 * waiting_room(slots)


class Admission:
    """Turns to publish, ``slots`` at a time; see the module docstring."""

    def __init__(self, slots: int, waiting: int, patience: float, retry_after: int) -> None:
        self.retry_after = retry_after
        self._slots = threading.BoundedSemaphore(slots)
        self._size = slots
        self._most_waiting = waiting
        self._waiting = 0
        self._lock = threading.Lock()
        self._patience = patience

    def enter(self) -> None:
        """Take a slot, waiting for one if the waiting room has a place; :meth:`leave` after.

        Raises:
            Overloaded: every slot is taken and either ``waiting`` requests already wait, or
                none came free within ``patience`` seconds.
        """
        if self._slots.acquire(blocking=False):
            return
        with self._lock:
            if self._waiting >= self._most_waiting:
                raise self._overloaded()
            self._waiting += 1
        try:
            admitted = self._slots.acquire(timeout=self._patience)
        finally:
            with self._lock:
                self._waiting -= 1
        if not admitted:
            raise self._overloaded()

    def leave(self) -> None:
        self._slots.release()

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot right now."""
        return self._waiting

    def _overloaded(self) -> Overloaded:
        return Overloaded(
            f"this proxy process is publishing {self._size} requests and has"
            f" {self._waiting} waiting; retry later",
            retry_after=self.retry_after,
        )


class Gate:
    """WSGI middleware: publishing requests (``POST /publish``, ``POST /<app>/v1/events``) go
    on to ``app`` only with a turn from ``admission``; the others pass untouched."""

    def __init__(self, app: WSGIApp, admission: Admission, metrics: ProxyMetrics) -> None:
        self._app = app
        self.admission = admission
        self._metrics = metrics
        self._lock = threading.Lock()
        self._refused = 0  #: since the last log line
        self._logged_at: float | None = None

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        route = publishing_route(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""))
        if route is None:
            return self._app(environ, start_response)
        started = time.perf_counter()
        try:
            self.admission.enter()
        except Overloaded as refusal:
            return self._refuse(route, refusal, started, start_response)
        try:
            return self._app(environ, start_response)
        finally:
            self.admission.leave()

    def _refuse(
        self,
        route: str,
        refusal: Overloaded,
        started: float,
        start_response: Callable[..., Any],
    ) -> Iterable[bytes]:
        """503 in the endpoint's own error format (Kyma's on the legacy endpoint)."""
        content_type, body = error_document(route, 503, "Event not stored", str(refusal))
        start_response(
            "503 Service Unavailable",
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Retry-After", str(refusal.retry_after)),
            ],
        )
        self._metrics.requests.labels("503", "POST", route).inc()
        self._metrics.request_duration.labels("503", "POST", route).observe(
            time.perf_counter() - started
        )
        self._note(refusal)
        return [body]

    def _note(self, refusal: Overloaded) -> None:
        with self._lock:
            self._refused += 1
            now = time.monotonic()
            last = self._logged_at
            if last is not None and now - last < _LOG_INTERVAL:
                return
            refused, self._refused, self._logged_at = self._refused, 0, now
        if last is None:
            logger.warning("overloaded, answering publishing requests 503: %s", refusal)
        else:
            logger.warning(
                "overloaded: %d publishing requests answered 503 in the last %.0f s",
                refused,
                now - last,
            )


_PUBLISH = "/publish"
_LEGACY = "/{application}/v1/events"  # as the request metrics label Flask's rule


def publishing_route(method: str, path: str) -> str | None:
    """The metrics label of a publishing request's route, or None for any other request.

    Mirrors the two POST rules of :mod:`proxy.views` without Flask's router, which would cost
    more than the refusal itself.
    """
    if method != "POST":
        return None
    if path == _PUBLISH:
        return _PUBLISH
    parts = path.split("/")
    if len(parts) == 4 and parts[0] == "" and parts[1] and parts[2:] == ["v1", "events"]:
        return _LEGACY
    return None


def error_document(route: str | None, status: int, title: str, detail: str) -> tuple[str, bytes]:
    """The content type and body of an error answered before Flask: Kyma's ``{"status",
    "message"}`` on the legacy endpoint, a problem document (RFC 9457) anywhere else."""
    document: dict[str, Any]
    if route == _LEGACY:
        document = {"status": status, "message": detail}
        content_type = "application/json"
    else:
        document = {"type": "about:blank", "title": title, "status": status, "detail": detail}
        content_type = "application/problem+json"
    return content_type, json.dumps(document).encode()
