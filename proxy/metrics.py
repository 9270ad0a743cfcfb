"""Prometheus metrics of the proxy, with Kyma's names and labels (kyma-eventing.md §2.9).

The proxy runs several worker processes; when the launcher handed over a snapshots folder
(:func:`eventing.settings.hand_over_metrics_dir`), every process keeps its values in memory and
writes a snapshot of them there every :data:`SNAPSHOT_INTERVAL` while they change
(:class:`Snapshots`); ``/metrics`` on any worker sums its own live values and every other
process's last snapshot (a process that ended keeps counting, as in prometheus_client's
multiprocess mode). Why not that mode: it writes a memory-mapped file, with a check of the
process id under a lock, for every value changed, five times per request: a tenth of a
request's Python time. Another worker's values may so be up to a snapshot interval old.

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

import atexit
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from flask import Flask
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from eventing import settings
from proxy import pending

logger = logging.getLogger(__name__)

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
        directory = settings.metrics_snapshots_dir()
        self._snapshots: Snapshots | None = None
        if directory:  # every process's values: our own live, the others' last snapshots
            self._snapshots = Snapshots(Path(directory), self.registry)
            served = CollectorRegistry()
            served.register(self._snapshots)
        #: The ``/metrics`` exposition (text, OpenMetrics or gzip, as the scraper asks).
        self.wsgi_app: WSGIApp = make_wsgi_app(served)

    def observe_request(self, code: int, method: str, route: str, started: float) -> None:
        """Count an answered request, begun at ``started`` (:func:`time.perf_counter`)."""
        if self._snapshots is not None:
            self._snapshots.changed = True  # every other value changes with a request
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
    middleware)."""
    app.wsgi_app = RequestCounter(app.wsgi_app, metrics)  # type: ignore[method-assign]


def _route(environ: dict[str, Any]) -> str:
    """The ``path`` label: admission's for a publishing request, else the rule Flask matched
    (read from its request object afterwards, which costs no hook in every request)."""
    route: str | None = environ.get(ROUTE)
    if route is not None:
        return route
    handled = environ.get("werkzeug.request")
    rule = getattr(handled, "url_rule", None)
    return rule.rule.replace("<", "{").replace(">", "}") if rule else ""


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
        deferred = pending.of(environ)
        if deferred is not None and deferred.messages is not None:
            return body  # answered, and counted, once the loop has their PubAcks
        self._metrics.observe_request(
            status[0], environ.get("REQUEST_METHOD", ""), _route(environ), started
        )
        return body


#: Seconds between two snapshots of a process's metrics while they change.
SNAPSHOT_INTERVAL = 1.0
_SNAPSHOT_SUFFIX = ".json"


class Snapshots(Collector):
    """One process's metrics (``registry``) written to ``directory`` while they change, and
    collected with every other process's (a collector of the registry ``/metrics`` serves).

    A snapshot is ``<pid>.json``: each family's name, help, type and samples. Counters and
    histograms are summed over processes, gauges take the largest value; ``_created`` samples
    (a process's start, which has no sum) are left out, as prometheus_client's multiprocess
    mode leaves them out.
    """

    def __init__(self, directory: Path, registry: CollectorRegistry) -> None:
        self._directory = directory
        self._registry = registry
        self._own = f"{os.getpid()}{_SNAPSHOT_SUFFIX}"
        self.changed = True  #: since the last snapshot; set by whoever changes a value
        threading.Thread(target=self._keep_writing, name="proxy-metrics", daemon=True).start()
        atexit.register(self._write_while_there)

    def write(self) -> None:
        """Snapshot this process's values (atomically: a reader sees the last whole one)."""
        self.changed = False
        families = [
            [family.name, family.documentation, family.type, _samples(family)]
            for family in self._registry.collect()
        ]
        partial = self._directory / f".{self._own}.partial"
        partial.write_text(json.dumps(families))
        partial.replace(self._directory / self._own)

    def collect(self) -> Iterator[Metric]:
        """Every process's families, summed: ours as they are now, the others' last snapshot."""
        merged: dict[str, Metric] = {}
        values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        own = [
            [family.name, family.documentation, family.type, _samples(family)]
            for family in self._registry.collect()
        ]
        for families in [own, *self._others()]:
            for name, documentation, kind, samples in families:
                if name not in merged:
                    merged[name], values[name] = Metric(name, documentation, kind), {}
                combine = max if kind == "gauge" else _add
                for sample, labels, value in samples:
                    key = (sample, tuple(sorted(labels.items())))
                    known = values[name].get(key)
                    values[name][key] = value if known is None else combine(known, value)
        for name, family in merged.items():
            for (sample, labels), value in values[name].items():
                family.add_sample(sample, dict(labels), value)
            yield family

    def _others(self) -> Iterator[list[Any]]:
        for path in self._directory.glob(f"*{_SNAPSHOT_SUFFIX}"):
            if path.name != self._own:
                try:
                    yield json.loads(path.read_bytes())
                except (OSError, ValueError):  # the folder is ours alone: never half-written
                    continue

    def _keep_writing(self) -> None:
        while True:
            time.sleep(SNAPSHOT_INTERVAL)
            if self.changed:
                self._write_while_there()

    def _write_while_there(self) -> None:
        try:
            self.write()
        except OSError as exc:  # the launcher removed the folder: it is stopping
            logger.debug("no metrics snapshot: %r", exc)


def _samples(family: Metric) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for sample in family.samples
        if not sample.name.endswith("_created")
    ]


def _add(first: float, second: float) -> float:
    return first + second
