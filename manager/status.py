"""The manager's HTTP API: subscription status, health, readiness, metrics.

Served by aiohttp's web server on the manager's own event loop (no thread, no lock): a handler
only reads the latest :class:`~eventing.subscriptions.status.View`, which the reconcile loop
replaces as a whole. Endpoints:

- ``GET /healthz``: 200 while the process runs;
- ``GET /readyz``: 200 once the last reconcile reached NATS, else 500;
- ``GET /metrics``: :class:`~manager.metrics.ManagerMetrics` in Prometheus' text format;
- ``GET /subscriptions``: every subscription with its status, and the unreadable files;
- ``GET /subscriptions/{namespace}/{name}``: one of them, or a 404 naming it.

A trailing slash is served as the path without it; any other path is a JSON 404 naming it,
any other method a JSON 405 (``http.server`` answered both in HTML, 501 for a method).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from eventing.subscriptions.status import View
from manager.metrics import ManagerMetrics

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class StatusServer:
    """Serves the current view over HTTP on the running loop, from :meth:`start` to
    :meth:`close`."""

    def __init__(
        self, host: str, port: int, metrics: ManagerMetrics, view: Callable[[], View]
    ) -> None:
        self._address = (host, port)
        self._socket: socket.socket | None = None
        self._runner = web.AppRunner(application(metrics, view), access_log=None)

    @property
    def port(self) -> int:
        """The port listened on (the one chosen when ``MANAGER_PORT`` is 0); after start."""
        assert self._socket is not None, "start() first"
        return int(self._socket.getsockname()[1])

    async def start(self) -> None:
        """Listen and serve.

        Raises:
            OSError: the address cannot be bound (e.g. the port is taken).
        """
        # Bound here rather than by aiohttp's TCPSite, so the chosen port can be read back.
        self._socket = socket.create_server(self._address)
        await self._runner.setup()
        await web.SockSite(self._runner, self._socket).start()

    async def close(self) -> None:
        """Stop listening and end open connections; idempotent."""
        await self._runner.cleanup()
        if self._socket is not None:
            self._socket.close()


def application(metrics: ManagerMetrics, view: Callable[[], View]) -> web.Application:
    """The endpoints as an aiohttp application; ``view`` gives the view to show now."""

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(body=b"ok\n", content_type="text/plain")

    async def readyz(request: web.Request) -> web.Response:
        if view().ready:
            return web.Response(body=b"ready\n", content_type="text/plain")
        return web.Response(status=500, body=b"not ready\n", content_type="text/plain")

    async def metrics_text(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def subscriptions(request: web.Request) -> web.Response:
        shown = view()
        return _json(200, {"items": list(shown.items), "unreadable": list(shown.unreadable)})

    async def subscription(request: web.Request) -> web.Response:
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        item = view().by_key.get(key)
        if item is None:
            return _not_found(f"no subscription {key}")
        return _json(200, item)

    app = web.Application(middlewares=[_unknown_paths])
    for path, handler in (
        ("/healthz", healthz),
        ("/readyz", readyz),
        ("/metrics", metrics_text),
        ("/subscriptions", subscriptions),
        ("/subscriptions/{namespace}/{name}", subscription),
    ):
        app.router.add_get(path, handler)
        app.router.add_get(f"{path}/", handler)  # as http.server's answers did, no redirect
    return app


@web.middleware
async def _unknown_paths(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """A path no route matches, or a method other than GET, gets a JSON answer like the
    others, not aiohttp's plain text."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return _not_found(f"no such endpoint: {request.path.rstrip('/') or '/'}")
    except web.HTTPMethodNotAllowed:
        detail = f"{request.method} {request.path}: only GET is served"
        return _json(405, {"title": "Method Not Allowed", "status": 405, "detail": detail})


def _not_found(detail: str) -> web.Response:
    return _json(404, {"title": "Not Found", "status": 404, "detail": detail})


def _json(status: int, body: Any) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, indent=2).encode() + b"\n",
        content_type="application/json",
    )
