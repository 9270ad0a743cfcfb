"""A real HTTP sink on loopback that records what it receives and answers as scripted."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


@dataclass(frozen=True)
class Delivery:
    """One request the sink received."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  #: time.monotonic() on arrival
    status: int  #: what the sink answered

    @property
    def event_id(self) -> str:
        return self.headers.get("ce-id", "")


@dataclass
class RecordingSink:
    """Records every request; ``answer`` picks the status (and may sleep) per request."""

    answer: Callable[[Request], int] = lambda request: 204
    deliveries: list[Delivery] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(
        self, environ: dict[str, object], start_response: Callable[..., object]
    ) -> Iterator[bytes]:
        request = Request(environ)
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            arrived = time.monotonic()
            body = request.get_data()
            status = self.answer(request)
            with self._lock:
                self.deliveries.append(
                    Delivery(
                        request.path,
                        {k.lower(): v for k, v in request.headers.items()},
                        body,
                        arrived,
                        status,
                    )
                )
        finally:
            with self._lock:
                self.in_flight -= 1
        return Response(status=status)(environ, start_response)  # type: ignore[no-any-return]

    def received(self, status: int | None = 204) -> list[Delivery]:
        """Deliveries answered with ``status`` (None: all)."""
        with self._lock:
            return [d for d in self.deliveries if status is None or d.status == status]

    def ids(self, status: int | None = 204) -> list[str]:
        return [d.event_id for d in self.received(status)]


class SinkServer:
    """Serves a :class:`RecordingSink` on a free loopback port, threaded."""

    def __init__(self, sink: RecordingSink, port: int = 0) -> None:
        self.sink = sink
        self._server = make_server("127.0.0.1", port, sink, threaded=True)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    def start(self) -> SinkServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: connections to the port are refused until :meth:`restart`."""
        self._server.shutdown()
        self._server.server_close()

    def restart(self) -> SinkServer:
        """Serve the same sink on the same port again after :meth:`stop` (a sink coming back)."""
        self._server = make_server("127.0.0.1", self.port, self.sink, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        return self.start()
