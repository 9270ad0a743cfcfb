"""Publisher: hands events to JetStream from Flask's threads and waits for every PubAck.

One :class:`JetStreamPublisher` per app; it starts its loop thread and NATS connection lazily in
the process that first publishes (granian starts worker processes after importing nothing of
ours, and threads never survive a fork). It bounds the events a process holds in flight, so an
overload becomes a quick 503 instead of a growing heap. Requests that arrive while the loop is
busy share one handover to it (:class:`eventing.loop.Rounds`), and their events are pipelined
on the connection together.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Protocol

from eventing.config import Settings
from eventing.errors import Overloaded, PublishError, StreamNotAnswering
from eventing.jetstream import JetStreamClient, OutboundMessage
from eventing.loop import LoopThread, Rounds


class Publisher(Protocol):
    """What the views need from a publisher; tests pass their own."""

    def publish(self, messages: list[OutboundMessage]) -> list[PublishError | None]:
        """Store every message; one outcome per message (``None``: stored)."""

    def ready(self) -> bool:
        """Whether NATS is connected and the event stream answers."""


class JetStreamPublisher:
    """Publishes through a per-process NATS connection on a private loop thread."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._timeout = settings.proxy.request_timeout
        self._max_in_flight = settings.proxy.max_in_flight
        self._in_flight = 0
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._loop: LoopThread | None = None
        self._client: JetStreamClient | None = None
        self._rounds: Rounds[OutboundMessage, PublishError | None] | None = None

    def publish(self, messages: list[OutboundMessage]) -> list[PublishError | None]:
        _, _, rounds = self._started()
        count = len(messages)
        with self._lock:
            if self._in_flight + count > self._max_in_flight:
                raise Overloaded(
                    f"this proxy process has {self._in_flight} events waiting for JetStream"
                    f" (limit {self._max_in_flight}); retry later",
                    retry_after=self._settings.proxy.retry_after,
                )
            self._in_flight += count
        try:
            return rounds.call(messages, self._timeout + 1)
        except TimeoutError:
            error = StreamNotAnswering(f"no acknowledgement within {self._timeout:g}s")
            return [error] * count
        finally:
            with self._lock:
                self._in_flight -= count

    def ready(self) -> bool:
        loop, client, _ = self._started()
        try:
            return loop.run(client.stream_exists(timeout=1.0), timeout=2.0)
        except TimeoutError:
            return False

    def close(self) -> None:
        """Drain the connection and stop the loop thread of this process."""
        if self._loop is None or self._client is None or self._pid != os.getpid():
            return
        with contextlib.suppress(TimeoutError):
            self._loop.run(self._client.close(), timeout=5.0)
        self._loop.close()
        self._pid = self._loop = self._client = self._rounds = None

    def _started(
        self,
    ) -> tuple[LoopThread, JetStreamClient, Rounds[OutboundMessage, PublishError | None]]:
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    self._start(pid)
        assert self._loop is not None and self._client is not None and self._rounds is not None
        return self._loop, self._client, self._rounds

    def _start(self, pid: int) -> None:
        loop = LoopThread(f"proxy-nats-{pid}")
        loop.start()
        client = JetStreamClient(
            self._settings.nats, self._settings.stream, name=f"eventing-proxy-{pid}"
        )

        async def connect() -> None:
            client.start()
            # Give a freshly started process a moment to connect, so its first request does
            # not fail; if NATS is down, answer 502 and keep reconnecting in the background.
            await client.wait_connected(self._settings.nats.connect_timeout)

        async def publish(messages: list[OutboundMessage]) -> list[PublishError | None]:
            return await client.publish_many(messages, self._timeout)

        loop.run(connect(), timeout=self._settings.nats.connect_timeout + 1)
        self._rounds = Rounds(loop, publish)
        self._loop, self._client, self._pid = loop, client, pid
