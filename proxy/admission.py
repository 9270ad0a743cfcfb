"""Admission: how many publishing requests one proxy process works on, and what the rest get.

Why: granian hands requests to a fixed pool of threads and queues the rest however long they
wait, so an overloaded proxy answered nothing quickly: at twice its capacity, requests waited
10 s and more for a thread, and ``PROXY_MAX_IN_FLIGHT`` (counted in events) was never reached
by single-event requests, 32 threads being far fewer than 1,000 events. Now at most ``slots``
requests publish at once, a burst of at most ``waiting`` more waits up to ``patience`` seconds
for a turn, and any other request is answered 503 with ``Retry-After`` at once.
``eventing-proxy`` gives the app threads for all three groups (:func:`thread_count`), so the
503s come from threads that are free. Admitted requests then hold their events in flight
(:meth:`Admission.holding`): at most ``PROXY_MAX_IN_FLIGHT`` events of a process wait for
JetStream, so an overload becomes a quick 503 instead of a growing heap. This is the one place
that decides a process is overloaded; :mod:`proxy.problems` decides what the answer looks like.

The check is a WSGI middleware in front of Flask and answers by itself: a refusal must cost far
less than a publish, or refusing cannot keep up with the load it refuses (through Flask, with
a log line each, a 503 cost two thirds of a publish; here it costs a tenth of that). It reads
nothing of the request but its method and path.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any

from eventing.errors import BatchTooLarge, Overloaded
from proxy import metrics, pending, problems

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
    """Turns to publish, ``slots`` at a time, and events in flight, ``max_events`` at a time;
    see the module docstring."""

    def __init__(
        self, slots: int, waiting: int, patience: float, retry_after: int, max_events: int
    ) -> None:
        self.retry_after = retry_after
        self._max_events = max_events
        self._events = 0
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
        if self.try_enter():
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

    def try_enter(self) -> bool:
        """Take a slot if one is free, without waiting (:meth:`leave` after); False if none."""
        return self._slots.acquire(blocking=False)

    def leave(self) -> None:
        self._slots.release()

    @contextlib.contextmanager
    def holding(self, count: int) -> Iterator[None]:
        """Hold ``count`` events in flight while they are published (:meth:`hold`)."""
        self.hold(count)
        try:
            yield
        finally:
            self.release(count)

    def hold(self, count: int) -> None:
        """Hold ``count`` events in flight until :meth:`release`.

        Raises:
            BatchTooLarge: ``count`` alone is more than ``max_events``: retrying cannot help.
            Overloaded: with the events already in flight, ``count`` more would be.
        """
        if count > self._max_events:
            raise BatchTooLarge(count, self._max_events)
        with self._lock:
            if self._events + count > self._max_events:
                raise Overloaded(
                    f"this proxy process has {self._events} events waiting for JetStream"
                    f" (limit {self._max_events}); retry later",
                    retry_after=self.retry_after,
                )
            self._events += count

    def release(self, count: int) -> None:
        """The ``count`` events held are settled."""
        with self._lock:
            self._events -= count

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

    def __init__(self, app: WSGIApp, admission: Admission) -> None:
        self._app = app
        self.admission = admission
        self._lock = threading.Lock()
        self._refused = 0  #: since the last log line
        self._logged_at: float | None = None

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        route = publishing_route(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""))
        if route is None:
            return self._app(environ, start_response)
        environ[metrics.ROUTE] = route
        try:
            self.admission.enter()
        except Overloaded as refusal:
            return self._refuse(route, refusal, start_response)
        try:
            answer = self._app(environ, start_response)
        except BaseException:
            self.admission.leave()
            raise
        deferred = pending.of(environ)
        if deferred is not None and deferred.messages is not None:
            deferred.release_after(self.admission.leave)  # the turn lasts until the PubAcks
        else:
            self.admission.leave()
        return answer

    def _refuse(
        self,
        route: str,
        refusal: Overloaded,
        start_response: Callable[..., Any],
    ) -> Iterable[bytes]:
        """The overload's answer, in the endpoint's own error format (Kyma's on the legacy
        endpoint), as Flask would have given it."""
        headers, body = problems.early_failure(route, refusal)
        start_response(f"{refusal.status} {HTTPStatus(refusal.status).phrase}", headers)
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
        return problems.LEGACY_ROUTE
    return None
