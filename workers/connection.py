"""The worker's own NATS connection: acks, keepalives and dead letters for its jobs.

Each worker process connects in ``before_worker_boot`` (never at import: dramatiq forks worker
processes, and threads do not survive a fork) on a private loop thread, and drains in
``after_worker_shutdown``. Delivery threads call the synchronous methods of
:class:`NatsAcknowledger`; :mod:`workers.actors` is the only caller.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from dramatiq import Middleware

from eventing import jetstream
from eventing.config import Settings
from eventing.errors import BackendUnavailable
from eventing.jetstream import JetStreamClient, OutboundMessage
from eventing.jobs import DeliveryJob
from eventing.loop import LoopThread

logger = logging.getLogger(__name__)

_ACK_TIMEOUT = 5.0


class Acknowledger(Protocol):
    """What a delivery job may tell JetStream about its message."""

    def ack(self, reply: str) -> None: ...

    def nak(self, reply: str, delay: float) -> None: ...

    def keepalive(self, reply: str) -> None: ...

    def dead_letter(
        self, job: DeliveryJob, reason: str, status: int | None, attempts: int
    ) -> None: ...


class NatsAcknowledger(Middleware):
    """A dramatiq middleware owning one NATS connection per worker process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._loop: LoopThread | None = None
        self._client: JetStreamClient | None = None

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        loop = LoopThread("worker-nats")
        loop.start()
        client = JetStreamClient(
            self._settings.nats,
            self._settings.stream,
            name="eventing-worker",
            streams=(jetstream.dead_letter_config(self._settings.stream),),
        )

        async def connect() -> None:
            client.start()
            await client.wait_connected(self._settings.nats.connect_timeout)

        loop.run(connect(), timeout=self._settings.nats.connect_timeout + 1)
        self._loop, self._client = loop, client

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        if self._loop is not None and self._client is not None:
            try:
                self._loop.run(self._client.close(), timeout=5.0)
            except TimeoutError:
                logger.warning("NATS connection did not drain within 5s")
            self._loop.close()

    def ack(self, reply: str) -> None:
        self._send(reply, b"+ACK")

    def nak(self, reply: str, delay: float) -> None:
        self._send(reply, b"-NAK " + json.dumps({"delay": int(delay * 1e9)}).encode())

    def keepalive(self, reply: str) -> None:
        # Fire and forget: a keepalive only restarts the ack wait, and a lost one costs at most
        # a redelivery, so the delivery thread does not wait for the loop to send it.
        loop, client = self._require()
        loop.submit(client.in_progress(reply))

    def dead_letter(self, job: DeliveryJob, reason: str, status: int | None, attempts: int) -> None:
        """Store the event in the dead-letter stream with why it ends there.

        Raises:
            PublishError: the dead letter was not stored (the caller must not ack then).
        """
        loop, client = self._require()
        headers = {
            "Eventing-Dead-Letter-Reason": _header_safe(reason),
            "Eventing-Dead-Letter-Status": str(status or ""),
            "Eventing-Dead-Letter-Attempts": str(attempts),
            "Eventing-Dead-Letter-Subscription": job.subscription,
            "Eventing-Dead-Letter-Type": _header_safe(job.event_type),
            "Eventing-Dead-Letter-Sink": _header_safe(job.sink),
            "Eventing-Dead-Letter-Stream-Sequence": str(job.stream_sequence),
            "Nats-Msg-Id": f"{job.consumer}-{job.stream_sequence}",
        }
        message = OutboundMessage(
            subject=f"{jetstream.DEAD_LETTER_PREFIX}.{job.consumer}",
            payload=job.event.encode(),
            headers=headers,
            event_type=job.event_type,
            event_source="",
        )
        timeout = self._settings.proxy.request_timeout
        stream = self._settings.stream.dead_letter_name
        loop.run(client.publish(message, timeout, stream=stream), timeout + 1)

    def _send(self, reply: str, payload: bytes) -> None:
        loop, client = self._require()
        try:
            loop.run(client.acknowledge(reply, payload, _ACK_TIMEOUT), timeout=_ACK_TIMEOUT + 1)
        except TimeoutError as exc:
            raise BackendUnavailable("acknowledgement not confirmed in time") from exc

    def _require(self) -> tuple[LoopThread, JetStreamClient]:
        if self._loop is None or self._client is None:
            raise BackendUnavailable("the worker's NATS connection is not started")
        return self._loop, self._client


def _header_safe(value: str) -> str:
    return " ".join(value.split())[:500]
