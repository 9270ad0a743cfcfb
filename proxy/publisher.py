"""Publisher: hands events to JetStream, from Flask's threads or granian's loop; awaits PubAcks.

One :class:`JetStreamPublisher` per app; it starts its NATS connection lazily in the process
that first publishes (granian starts worker processes after importing nothing of ours, and
threads never survive a fork), on the event loop granian's worker serves requests on when it
was given one (:meth:`JetStreamPublisher.serve_on`; the server's own coroutines then publish
there, :meth:`JetStreamPublisher.publish_here`), else on a loop thread of its own. The
events a process holds in flight are bounded before they get here
(:meth:`proxy.admission.Admission.holding`). Requests that arrive while the loop is busy share
one handover to it (:class:`eventing.nats.loop.Rounds`), and their events are pipelined on the
connection together.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Protocol

from eventing.errors import PublishError, StreamNotAnswering
from eventing.nats.client import JetStreamClient
from eventing.nats.loop import LoopThread, Rounds, RunningLoop
from eventing.nats.messages import OutboundMessage
from eventing.settings import Settings


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
        self._lock = threading.Lock()
        self._connection: _Connection | None = None  #: of this process, made lazily
        self._serving: tuple[int, asyncio.AbstractEventLoop] | None = None  #: pid, its loop

    def serve_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Publish on ``loop``, the running loop of the server of this process, instead of a
        loop thread: with its own loop thread, every request woke three threads (the server's
        loop, a request thread and the NATS loop), and switching between them cost more CPU
        than the Python of the request. Never call :meth:`publish` on ``loop`` itself."""
        self._serving = (os.getpid(), loop)

    def publish(self, messages: list[OutboundMessage]) -> list[PublishError | None]:
        rounds = self._started().rounds
        try:
            return rounds.call(messages, self._timeout + 1)
        except TimeoutError:
            error = StreamNotAnswering(f"no acknowledgement within {self._timeout:g}s")
            return [error] * len(messages)

    async def publish_here(self, messages: list[OutboundMessage]) -> list[PublishError | None]:
        """:meth:`publish` from a coroutine on the loop given to :meth:`serve_on` (where
        :class:`proxy.bodies.BodiesFirst` publishes the events its views defer)."""
        connection = self._connection
        if connection is None or connection.pid != os.getpid():  # connect on a thread, once
            connection = await asyncio.to_thread(self._started)
        try:
            async with asyncio.timeout(self._timeout + 1):
                return await connection.client.publish_many(messages, self._timeout)
        except TimeoutError:
            error = StreamNotAnswering(f"no acknowledgement within {self._timeout:g}s")
            return [error] * len(messages)

    def ready(self) -> bool:
        connection = self._started()
        try:
            return connection.loop.run(connection.client.stream_exists(timeout=1.0), timeout=2.0)
        except TimeoutError:
            return False

    def close(self) -> None:
        """Drain the connection and stop the loop thread of this process."""
        connection = self._connection
        if connection is None or connection.pid != os.getpid():
            return
        with contextlib.suppress(TimeoutError):
            connection.loop.run(connection.client.close(), timeout=5.0)
        connection.loop.close()
        self._connection = None

    def _started(self) -> _Connection:
        """This process's connection, started at its first use (a forked process makes its own)."""
        pid = os.getpid()
        connection = self._connection
        if connection is None or connection.pid != pid:
            with self._lock:
                connection = self._connection
                if connection is None or connection.pid != pid:
                    connection = self._connection = self._start(pid)
        return connection

    def _start(self, pid: int) -> _Connection:
        serving = self._serving
        name = f"proxy-nats-{pid}"
        loop = (
            RunningLoop(name, serving[1])
            if serving is not None and serving[0] == pid
            else LoopThread(name)
        )
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
        return _Connection(pid, loop, client, Rounds(loop, publish))


@dataclass(frozen=True, slots=True)
class _Connection:
    """A process's NATS connection on its loop thread, and the rounds its publishes share."""

    pid: int
    loop: LoopThread
    client: JetStreamClient
    rounds: Rounds[OutboundMessage, PublishError | None]
