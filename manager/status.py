"""The manager's HTTP API: subscription status, health, readiness, metrics.

Served by aiohttp's web server on the manager's own event loop (no thread, no lock): a handler
only reads the latest :class:`~eventing.subscriptions.status.View`, which the reconcile loop
replaces as a whole. Endpoints:

- ``GET /healthz``: 200 while the process runs;
- ``GET /readyz``: 200 once the last reconcile reached NATS, else 500;
- ``GET /metrics``: :class:`~manager.metrics.ManagerMetrics` in Prometheus' text format;
- ``GET /subscriptions``: every subscription with its status, and the unreadable files;
- ``GET /subscriptions/{namespace}/{name}``: one of them, or a 404 naming it;
- the operations routes (:mod:`manager.api`'s modules) given to :func:`application`.

A trailing slash is served as the path without it; any other path is a JSON 404 naming it,
any other method a JSON 405 (``http.server`` answered both in HTML, 501 for a method).
Every error is a problem document (:func:`problem`).

With ``MANAGER_API_TOKEN_FILE`` every endpoint but the probes requires
``Authorization: Bearer <token>`` (a JSON 401 otherwise): the status names every sink and the
metrics every consumer, which no other pod of the cluster needs to read. The probes stay open,
since the kubelet sends no credential. Bound beyond loopback without a token file, the manager
refuses to start (:func:`api_token`).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from eventing.errors import ConfigError
from eventing.settings import ManagerSettings
from eventing.subscriptions.status import View
from manager.metrics import ManagerMetrics

logger = logging.getLogger(__name__)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: What the kubelet asks without a credential; everything else needs the token when one is set.
_PROBES = frozenset({"/healthz", "/healthz/", "/readyz", "/readyz/"})


class ApiToken:
    """The bearer token of the API, read from its file at each request: a rotated Secret (the
    kubelet rewrites the mounted file) applies without a restart, and a request or two per
    scrape interval makes the read free."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> bytes:
        """The token, without surrounding whitespace.

        Raises:
            OSError: the file cannot be read.
            ValueError: the file is empty.
        """
        token = self.path.read_bytes().strip()
        if not token:
            raise ValueError(f"{self.path} is empty")
        return token

    def admits(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token (compared in constant time).

        Raises:
            OSError, ValueError: as :meth:`read`.
        """
        scheme, _, credential = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credential.strip().encode(), self.read()
        )


def api_token(settings: ManagerSettings) -> ApiToken | None:
    """The token the API requires, or None where it may be open (loopback without a file).

    Raises:
        ConfigError: the API binds beyond loopback without ``MANAGER_API_TOKEN_FILE``, or the
            file named cannot be read or is empty; the manager must not start then.
    """
    variable = "MANAGER_API_TOKEN_FILE"
    if not settings.api_token_file:
        if _is_loopback(settings.host):
            return None
        raise ConfigError(
            {
                variable: f"required since MANAGER_HOST={settings.host} is not loopback: the"
                " status and metrics would be open to every pod that reaches the port (name a"
                " file holding a token, or bind MANAGER_HOST to 127.0.0.1)"
            }
        )
    token = ApiToken(Path(settings.api_token_file))
    try:
        token.read()
    except (OSError, ValueError) as exc:
        raise ConfigError({variable: f"cannot read the token: {exc}"}) from None
    return token


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


class StatusServer:
    """Serves the current view over HTTP on the running loop, from :meth:`start` to
    :meth:`close`."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: ManagerMetrics,
        view: Callable[[], View],
        token: ApiToken | None = None,
        routes: Sequence[web.RouteDef] = (),
    ) -> None:
        self._address = (host, port)
        self._socket: socket.socket | None = None
        self._runner = web.AppRunner(application(metrics, view, token, routes), access_log=None)

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


def application(
    metrics: ManagerMetrics,
    view: Callable[[], View],
    token: ApiToken | None = None,
    routes: Sequence[web.RouteDef] = (),
) -> web.Application:
    """The endpoints as an aiohttp application; ``view`` gives the view to show now,
    ``token``, if any, is required of every request but the probes, and ``routes`` are served
    beside the status (each also with a trailing slash)."""

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

    guards: list[Middleware] = [] if token is None else [_bearer(token)]
    app = web.Application(middlewares=[*guards, _unknown_paths])
    for path, handler in (
        ("/healthz", healthz),
        ("/readyz", readyz),
        ("/metrics", metrics_text),
        ("/subscriptions", subscriptions),
        ("/subscriptions/{namespace}/{name}", subscription),
    ):
        app.router.add_get(path, handler)
        app.router.add_get(f"{path}/", handler)  # as http.server's answers did, no redirect
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
        app.router.add_route(route.method, f"{route.path}/", route.handler)
    return app


@web.middleware
async def _unknown_paths(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """A path no route matches, or a method other than GET, gets a JSON answer like the
    others, not aiohttp's plain text."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return _not_found(f"no such endpoint: {request.path.rstrip('/') or '/'}")
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods - {"HEAD"})) or "GET"
        detail = f"{request.method} {request.path}: only {allowed} is served here"
        return problem(405, detail)


def _bearer(token: ApiToken) -> Middleware:
    """A middleware answering 401 to a request without the token, before any route (an unknown
    path too: which endpoints exist is no business of a caller without the token)."""

    @web.middleware
    async def require_token(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path in _PROBES:
            return await handler(request)
        try:
            admitted = token.admits(request.headers.get("Authorization"))
        except (OSError, ValueError) as exc:
            logger.error("MANAGER_API_TOKEN_FILE: cannot read the token: %s", exc)
            detail = "the manager cannot read its API token (MANAGER_API_TOKEN_FILE)"
            return _json(503, {"title": "Service Unavailable", "status": 503, "detail": detail})
        if admitted:
            return await handler(request)
        response = _json(
            401,
            {
                "title": "Unauthorized",
                "status": 401,
                "detail": "expected the header Authorization: Bearer <the token of"
                " MANAGER_API_TOKEN_FILE>",
            },
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="eventing-manager"'
        return response

    return require_token


def _not_found(detail: str) -> web.Response:
    return problem(404, detail)


def problem(status: int, detail: str, **fields: Any) -> web.Response:
    """A problem document (RFC 9457's fields, served as ``application/json`` like every answer
    of this API) with ``detail`` saying what was wrong and what was expected; ``fields`` are
    added as they are (``field``, ``expected``...)."""
    title = HTTPStatus(status).phrase
    return _json(status, {"title": title, "status": status, "detail": detail, **fields})


def json_response(body: Any, status: int = 200) -> web.Response:
    """``body`` as indented JSON."""
    return _json(status, body)


def _json(status: int, body: Any) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, indent=2).encode() + b"\n",
        content_type="application/json",
    )
