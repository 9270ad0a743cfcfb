"""The manager's HTTP endpoint: subscription status, health, readiness, metrics.

Served by a stdlib threading HTTP server on ``MANAGER_PORT``; it only reads the latest
:class:`View`, which the reconcile loop replaces as a whole, so no locking is needed.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class View:
    """What the endpoint shows: every subscription object with its status, readiness, and the
    manifest files that could not be read (``{file, problem}``; a file is no subscription)."""

    items: tuple[dict[str, Any], ...] = ()
    ready: bool = False
    by_key: dict[str, dict[str, Any]] = field(default_factory=dict)
    unreadable: tuple[dict[str, str], ...] = ()


class ManagerMetrics:
    """Kyma's manager metrics (kyma-eventing.md §5.8) plus the jobs we enqueue."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.subscribed = Counter(
            "eventing_ec_event_type_subscribed",
            "Consumers created for an event type of a subscription.",
            ["subscription_name", "subscription_namespace", "event_type", "consumer_name"],
            registry=self.registry,
        )
        self.status = Gauge(
            "eventing_ec_subscription_status",
            "1 while a subscription's consumer is active, 0 otherwise.",
            [
                "subscription_name",
                "subscription_namespace",
                "consumer_name",
                "eventing_backend",
                "stream_name",
            ],
            registry=self.registry,
        )
        self.health = Gauge(
            "eventing_ec_health", "1 while the manager runs.", registry=self.registry
        )
        self.enqueued = Counter(
            "eventing_manager_jobs_enqueued",
            "Delivery jobs handed to the workers, by consumer.",
            ["consumer_name"],
            registry=self.registry,
        )
        self.pending = Gauge(
            "eventing_manager_consumer_pending",
            "Events stored for a consumer and not yet handed to the workers (its backlog).",
            ["consumer_name"],
            registry=self.registry,
        )
        self.shed = Counter(
            "eventing_manager_backlog_dead_lettered",
            "Oldest waiting events moved to the dead-letter stream because a backlog exceeded"
            " MAX_BACKLOG.",
            ["consumer_name"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "eventing_manager_leader",
            "1 while this manager works: it holds the Lease, or LEADER_ELECTION is off.",
            registry=self.registry,
        )
        self.health.set(1)


class StatusServer:
    """Serves a :class:`View` over HTTP from a daemon thread."""

    def __init__(self, host: str, port: int, metrics: ManagerMetrics) -> None:
        self.view = View()
        self._metrics = metrics
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._answer(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._http = ThreadingHTTPServer((host, port), Handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="manager-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        view = self.view
        path = request.path.split("?", 1)[0].rstrip("/") or "/"
        parts = path.strip("/").split("/")
        if path == "/healthz":
            self._send(request, 200, "text/plain", b"ok\n")
        elif path == "/readyz":
            code = 200 if view.ready else 500
            self._send(request, code, "text/plain", b"ready\n" if view.ready else b"not ready\n")
        elif path == "/metrics":
            self._send(request, 200, CONTENT_TYPE_LATEST, generate_latest(self._metrics.registry))
        elif path == "/subscriptions":
            self._json(
                request, 200, {"items": list(view.items), "unreadable": list(view.unreadable)}
            )
        elif len(parts) == 3 and parts[0] == "subscriptions":
            item = view.by_key.get(f"{parts[1]}/{parts[2]}")
            if item is None:
                self._json(
                    request,
                    404,
                    {
                        "title": "Not Found",
                        "status": 404,
                        "detail": f"no subscription {parts[1]}/{parts[2]}",
                    },
                )
            else:
                self._json(request, 200, item)
        else:
            self._json(
                request,
                404,
                {"title": "Not Found", "status": 404, "detail": f"no such endpoint: {path}"},
            )

    def _json(self, request: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        self._send(request, status, "application/json", json.dumps(body, indent=2).encode() + b"\n")

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes) -> None:
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
