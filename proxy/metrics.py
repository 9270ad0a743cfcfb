"""Prometheus metrics of the proxy, with Kyma's names and labels (kyma-eventing.md §2.9).

The proxy runs several worker processes; when ``PROMETHEUS_MULTIPROC_DIR`` is set (the
``eventing-proxy`` launcher sets it before any worker starts), every process writes its values
there and ``/metrics`` on any worker sums all of them.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

_REQUEST_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_BACKEND_BUCKETS = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ProxyMetrics:
    """The proxy's metric families, registered in a registry of their own."""

    def __init__(self, destination: str) -> None:
        self.destination = destination
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
        self.health = Gauge(
            "eventing_epp_health",
            "1 while the proxy runs.",
            multiprocess_mode="max",
            registry=self.registry,
        )
        self.health.set(1)

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition of every process's metrics, and its content type."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
