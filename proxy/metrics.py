"""Prometheus metrics of the proxy, with Kyma's names and labels (kyma-eventing.md §2.9).

The proxy runs several worker processes; when the launcher handed over a metrics folder
(:func:`eventing.settings.hand_over_metrics_dir`, before any worker starts), every process
writes its values there and ``/metrics`` on any worker sums all of them.

Labels a client chooses are bounded, because every distinct value is a series that each
process keeps in memory and in its file for good: 62,000 distinct event types in 20 s made
``/metrics`` 6.4 MB (3 s a scrape) and doubled the proxy's memory, and in a pod the files fill
``/tmp``. The first ``max_event_types`` (type, source) pairs a process sees keep their names,
later ones are counted as ``other``; methods other than HTTP's own are ``other`` too. Every other
label is ours (status codes, Flask's rules, the NATS URLs).

Every answer is counted in one place, :class:`RequestCounter`, a WSGI middleware around the
whole app (Flask's answers and admission's 503 alike); the route label reaches it through the
environ (:data:`ROUTE`). Only the 408 of :mod:`proxy.bodies`, answered before the WSGI app is
called, is counted there, through the same :meth:`ProxyMetrics.observe_request`.
``/metrics`` is prometheus_client's own WSGI exposition (:attr:`ProxyMetrics.wsgi_app`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.multiprocess import MultiProcessCollector

from eventing import settings

#: The label value that stands for any value beyond a label's bound.
OTHER = "other"
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)

_REQUEST_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_BACKEND_BUCKETS = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

#: The environ key that holds a request's ``path`` label once it is known: Flask's rule (with
#: ``{}`` for ``<>``), or the publishing route admission recognised; none: ``""``.
ROUTE = "eventing.route"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ProxyMetrics:
    """The proxy's metric families, registered in a registry of their own."""

    def __init__(self, destination: str, max_event_types: int) -> None:
        self.destination = destination
        self._max_event_types = max_event_types
        self._event_labels: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "eventing_epp_requests",
            "Requests answered by the proxy.",
            ["code", "method", "path"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "eventing_epp_requests_duration_seconds",
            "Time to answer a request.",
            ["code", "method", "path"],
            buckets=_REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.backend_duration = Histogram(
            "eventing_epp_backend_duration_milliseconds",
            "Time JetStream took to acknowledge (or refuse) the events of a request.",
            ["code", "destination_service"],
            buckets=_BACKEND_BUCKETS,
            registry=self.registry,
        )
        self.published = Counter(
            "eventing_epp_event_type_published",
            "Events stored in JetStream, by type (originaltype) and source.",
            ["event_type", "event_source", "code"],
            registry=self.registry,
        )
        self.publisher_events = Counter(
            "eventing_epp_publisher_events",
            "Events stored, by publisher: a name from PROXY_API_KEYS_FILE or"
            " PROXY_JWT_RULES_FILE, or anonymous while publishing is open.",
            ["publisher"],
            registry=self.registry,
        )
        self.refused = Counter(
            "eventing_epp_publisher_refusals",
            "Requests refused for their credentials: unauthenticated (401, publisher empty) or"
            " forbidden (403, by publisher).",
            ["publisher", "reason"],
            registry=self.registry,
        )
        self.health = Gauge(
            "eventing_epp_health",
            "1 while the proxy runs.",
            multiprocess_mode="max",
            registry=self.registry,
        )
        self.health.set(1)
        served = self.registry
        directory = settings.metrics_dir()
        if directory:  # every process's values, read from the folder at each scrape
            served = CollectorRegistry()
            MultiProcessCollector(served, path=directory)  # type: ignore[no-untyped-call]
        #: The ``/metrics`` exposition (text, OpenMetrics or gzip, as the scraper asks).
        self.wsgi_app: WSGIApp = make_wsgi_app(served)

    def observe_request(self, code: int, method: str, route: str, started: float) -> None:
        """Count an answered request, begun at ``started`` (:func:`time.perf_counter`)."""
        labels = (str(code), self.method_label(method), route)
        self.requests.labels(*labels).inc()
        self.request_duration.labels(*labels).observe(time.perf_counter() - started)

    def event_labels(self, event_type: str, source: str) -> tuple[str, str]:
        """The ``event_type`` and ``event_source`` labels of an event: its own while this
        process has seen fewer than ``max_event_types`` pairs, else ``other`` twice."""
        pair = (event_type, source)
        if pair in self._event_labels:
            return pair
        with self._lock:
            if len(self._event_labels) < self._max_event_types:
                self._event_labels.add(pair)
                return pair
        return OTHER, OTHER

    @staticmethod
    def method_label(method: str) -> str:
        """The ``method`` label of a request: HTTP's own methods by name (in upper case, as
        Werkzeug reads them), any other ``other``."""
        method = method.upper()
        return method if method in _METHODS else OTHER


def install(app: Flask, metrics: ProxyMetrics) -> None:
    """Count every request ``app`` answers: wrap its WSGI app, outermost (call after every other
    middleware), and label each request with Flask's rule."""
    app.before_request(_label_route)
    app.wsgi_app = RequestCounter(app.wsgi_app, metrics)  # type: ignore[method-assign]


def _label_route() -> None:
    rule = request.url_rule
    request.environ[ROUTE] = rule.rule.replace("<", "{").replace(">", "}") if rule else ""


class RequestCounter:
    """WSGI middleware: counts each answer of ``app`` by status, method and route."""

    def __init__(self, app: WSGIApp, metrics: ProxyMetrics) -> None:
        self._app = app
        self._metrics = metrics

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        status = [500]

        def counted_start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
            status[0] = int(line.split(" ", 1)[0])
            return start_response(line, headers, exc_info)

        body = self._app(environ, counted_start_response)
        self._metrics.observe_request(
            status[0], environ.get("REQUEST_METHOD", ""), environ.get(ROUTE, ""), started
        )
        return body
