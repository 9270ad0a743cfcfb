"""JetStreamClient: the one NATS connection of a process, and what travels over it.

The one module that connects to NATS; nats errors are translated here into
:mod:`eventing.errors`, so callers decide HTTP answers without knowing the library. A client
lives on one event loop and never gives up: it connects and reconnects forever in the
background, and a publish while disconnected fails at once instead of hanging. It publishes
(waiting for the PubAck), acknowledges, keeps counts in a key-value bucket, and hands the
manager its consumers (:mod:`eventing.nats.consumers`) and stored messages
(:mod:`eventing.nats.stored`). Its retry loops run on tenacity.

Over 400 lines on purpose: everything here shares one connection's state (connected or not, the
JetStream context, the key-value handles dropped with a connection), and the callers
(proxy, workers, manager) each use a different part of it through this one object.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.kv import KeyValue
from tenacity import AsyncRetrying, retry_if_exception_type, stop_before_delay, wait_fixed

from eventing.errors import (
    BackendRejected,
    BackendUnavailable,
    PublishError,
    StreamFull,
    StreamNotAnswering,
)
from eventing.nats.auth import connect_options, reload_certificate, unauthenticated_warning
from eventing.nats.consumers import ConsumerApi
from eventing.nats.messages import OutboundMessage
from eventing.nats.stored import StoredMessages
from eventing.nats.streams import needs_update, stream_config
from eventing.redaction import without_credentials
from eventing.settings import NatsSettings, StreamSettings

logger = logging.getLogger(__name__)

_STORE_FAILED = 10077  # JetStream API error "store failed" (maximum bytes/messages exceeded)
_NO_STREAM_PAUSE = 0.1  # seconds between publishes to a stream that has no leader, or none yet
_CLOSE_TIMEOUT = 1.0  # seconds a drain, then a close, may take when the server does not answer
_FAILURE_REPORT_EVERY = 30.0  # seconds between warnings while NATS cannot be reached
_AUTHORIZATION_VIOLATION = "Authorization Violation"  # how nats-server refuses credentials
T = TypeVar("T")


class JetStreamClient:
    """A NATS connection and JetStream context owned by one event loop.

    Call :meth:`start` on that loop; it returns at once and connects in the background. On every
    (re)connection it creates or updates the ``streams`` it was given.
    """

    def __init__(
        self,
        nats_settings: NatsSettings,
        stream: StreamSettings,
        *,
        name: str,
        streams: tuple[StreamConfig, ...] | None = None,
        retired: tuple[str, ...] = (),
    ) -> None:
        self._settings = nats_settings
        self._stream = stream
        self._streams = streams if streams is not None else (stream_config(stream),)
        self._retired = retired  #: streams deleted where found (a feature turned off)
        self._name = name
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._ensuring: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._given_up = asyncio.Event()  #: nats-py closed the current connection for good
        self._buckets: dict[str, KeyValue] = {}
        self._closing = False
        self._failure_reported_at: float | None = None  #: monotonic; None while connected
        self._tls: ssl.SSLContext | None = None  #: the current connection's, reloaded on loss
        self._abandoning: asyncio.Task[None] | None = None  #: closing a refused connection

    @property
    def is_connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def start(self) -> None:
        """Begin connecting (forever, in the background); idempotent."""
        if self._connecting is None:
            warning = unauthenticated_warning(self._settings)
            if warning:
                logger.warning("%s: %s", self._name, warning)
            self._connecting = asyncio.get_running_loop().create_task(self._stay_connected())

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the first connection; whether it is up."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return self.is_connected

    async def _stay_connected(self) -> None:
        """Keep a connection open until :meth:`close`.

        nats-py reconnects by itself (forever: ``max_reconnect_attempts=-1``), but gives a
        connection up for good after some protocol errors; then a new one is opened, after
        ``RECONNECT_WAIT`` so that a server that keeps refusing us is not asked in a busy loop.
        """
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_GivenUp),
            wait=wait_fixed(self._settings.reconnect_wait),
        )
        await retrying(self._connection)

    async def _connection(self) -> None:
        """Open a connection and hold it until nats-py gives it up (raises :class:`_GivenUp`)."""
        self._given_up.clear()
        self._abandoning = None
        await self._connect()
        await self._given_up.wait()
        raise _GivenUp

    async def _connect(self) -> None:
        try:
            secured = connect_options(self._settings)
        except (OSError, ssl.SSLError) as exc:  # a certificate file being replaced, say
            logger.warning("%s cannot read its NATS TLS files: %s; retrying", self._name, exc)
            raise _GivenUp from None
        self._tls = secured.get("tls")
        self._nc = await nats.connect(
            servers=list(self._settings.urls),
            **secured,
            name=self._name,
            inbox_prefix=self._settings.inbox_prefix,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self._settings.reconnect_wait,
            connect_timeout=self._settings.connect_timeout,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
        )
        self._js = self._nc.jetstream()
        self._failure_reported_at = None
        logger.info("%s connected to NATS", self._name)
        await self._ensure_stream_shared()
        self._connected.set()

    async def _on_error(self, exc: Exception) -> None:
        """nats-py reports every failed connection attempt here: the first one while
        disconnected, and one every ``_FAILURE_REPORT_EVERY`` after it, are logged as warnings,
        naming the servers (without credentials), so a wrong ``NATS_URL`` is not silent.

        A server that refuses our credentials while we reconnect makes us give the connection
        up: nats-py would retry with what it read when it was opened (an NKEY's public key, the
        CA) forever, while a connection opened anew reads every credential file again.
        """
        refused = self._nc
        if (
            refused is not None
            and not refused.is_connected
            and not refused.is_closed
            and not self._closing
            and self._abandoning is None
            and _AUTHORIZATION_VIOLATION in str(exc)
        ):
            self._abandoning = asyncio.get_running_loop().create_task(refused.close())
        now = time.monotonic()
        last = self._failure_reported_at
        if (
            self.is_connected
            or self._closing
            or (last is not None and now - last < _FAILURE_REPORT_EVERY)
        ):
            logger.debug("%s: NATS connection error: %r", self._name, exc)
            return
        self._failure_reported_at = now
        logger.warning(
            "%s cannot connect to NATS at %s: %s; retrying every %gs",
            self._name,
            without_credentials(", ".join(self._settings.urls)),
            without_credentials(str(exc) or repr(exc)),
            self._settings.reconnect_wait,
        )

    async def _on_disconnected(self) -> None:
        if self._closing:  # our own close: nothing to report
            return
        logger.warning("%s disconnected from NATS; reconnecting", self._name)
        if self._tls is not None:
            try:  # the next handshake presents a renewed client certificate
                reload_certificate(self._tls, self._settings)
            except (OSError, ssl.SSLError) as exc:
                logger.warning("%s keeps its NATS client certificate: %s", self._name, exc)

    async def _on_reconnected(self) -> None:
        self._failure_reported_at = None
        logger.info("%s reconnected to NATS", self._name)
        self.ensure_stream_soon()

    async def _on_closed(self) -> None:
        """nats-py gave the connection up for good (it does after some protocol errors, even
        with unlimited reconnects): open a new one, unless we are the ones closing it."""
        if self._closing:
            return
        logger.warning("%s: NATS connection closed; opening a new one", self._name)
        self._js = None
        self._buckets.clear()
        self._given_up.set()

    def ensure_stream_soon(self) -> None:
        """Create or update the event stream in the background, unless that is under way."""
        if self._ensuring is None or self._ensuring.done():
            self._ensuring = asyncio.get_running_loop().create_task(self._ensure_stream_logged())

    async def _ensure_stream_shared(self) -> None:
        """Ensure the stream once for every concurrent caller (one request to the server)."""
        self.ensure_stream_soon()
        assert self._ensuring is not None
        await asyncio.shield(self._ensuring)

    async def _ensure_stream_logged(self) -> None:
        try:
            await self.ensure_stream()
        except Exception as exc:  # logged, retried on the next reconnect or missing-stream publish
            logger.warning("%s could not create or update its streams: %s", self._name, exc)

    async def ensure_stream(self) -> None:
        """Create each managed stream if missing, or update it where its limits differ; delete
        each retired one that is there."""
        js = self._require_js()
        for name in self._retired:
            try:
                await js.delete_stream(name)
            except nats.js.errors.NotFoundError:
                continue
            logger.warning("deleted stream %s: it is turned off", name)
        for wanted in self._streams:
            assert wanted.name is not None
            try:
                info = await js.stream_info(wanted.name)
            except nats.js.errors.NotFoundError:
                await js.add_stream(wanted)
                logger.info("created stream %s", wanted.name)
                continue
            if needs_update(info.config, wanted):
                await js.update_stream(wanted)
                logger.info("updated stream %s", wanted.name)

    async def stream_exists(self, timeout: float) -> bool:
        """Whether the event stream answers right now."""
        if not self.is_connected or self._js is None:
            return False
        try:
            await asyncio.wait_for(self._js.stream_info(self._stream.name), timeout)
        except (nats.errors.Error, TimeoutError):
            return False
        return True

    async def publish(
        self, message: OutboundMessage, timeout: float, *, stream: str | None = None
    ) -> bool:
        """Store one message and wait for the PubAck.

        No responder on the subject means the stream is missing (a fresh or wiped server) or,
        in a cluster, has no leader for a moment (a node died and the others elect a new one).
        Either way the stream is (re)created in the background if missing, and the message is
        sent again every ``_NO_STREAM_PAUSE`` until ``timeout``. Waiting for that creation
        instead stalled publishing through a whole timeout after an election: without a leader
        nobody answers the stream info it starts with.

        Returns:
            Whether JetStream recognised the message as a duplicate (stored before: success).

        Raises:
            PublishError: a subclass saying why the message was not stored.
        """
        stream = stream or self._stream.name
        deadline = time.monotonic() + timeout
        try:
            return await self._publish_once(message, timeout, stream)
        except _NoStream as missing:
            self.ensure_stream_soon()
            return await self._publish_again(message, deadline, stream, missing)

    async def _publish_again(
        self, message: OutboundMessage, deadline: float, stream: str, missing: _NoStream
    ) -> bool:
        """Publish every ``_NO_STREAM_PAUSE`` until a stream answers or ``deadline`` is near.

        The first attempt (``missing``) was made by :meth:`publish` itself: building tenacity's
        machinery for every publish cost the proxy's hot path more than the publish.
        """
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_NoStream),
            wait=wait_fixed(_NO_STREAM_PAUSE),
            stop=stop_before_delay(deadline - time.monotonic()),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    raise missing
                return await self._publish_once(message, deadline - time.monotonic(), stream)
        raise AssertionError("tenacity ended without a result or an error")

    async def _publish_once(self, message: OutboundMessage, timeout: float, stream: str) -> bool:
        if not self.is_connected or self._js is None:
            raise BackendUnavailable("not connected to NATS")
        try:
            ack = await self._js.publish(
                message.subject,
                message.payload,
                timeout=timeout,
                stream=stream,
                headers=message.headers,
            )
        except nats.js.errors.NoStreamResponseError:
            raise _NoStream(f"no stream answered for subject {message.subject}") from None
        except nats.js.errors.APIError as exc:
            raise _translate_api_error(exc) from exc
        except (nats.errors.TimeoutError, TimeoutError):
            raise StreamNotAnswering(
                f"stream {stream} did not acknowledge within {timeout:g}s"
            ) from None
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.OutboundBufferLimitError,
            nats.errors.StaleConnectionError,
        ) as exc:
            raise BackendUnavailable(f"NATS connection lost: {exc}") from exc
        return bool(ack.duplicate)

    async def publish_many(
        self, messages: list[OutboundMessage], timeout: float, *, stream: str | None = None
    ) -> list[PublishError | None]:
        """Publish concurrently (pipelined on the one connection); one outcome per message."""
        results = await asyncio.gather(
            *(self.publish(message, timeout, stream=stream) for message in messages),
            return_exceptions=True,
        )
        outcomes: list[PublishError | None] = []
        for result in results:
            if isinstance(result, PublishError):
                outcomes.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                outcomes.append(None)
        return outcomes

    async def acknowledge(self, reply: str, payload: bytes, timeout: float) -> None:
        """Send an ack-type message (``+ACK``, ``-NAK {…}``, ``+TERM``) and wait for the server.

        Any connection may ack: an ack is a publish to the message's reply subject. Waiting for
        the reply makes sure the ack left our buffers before a job reports success.

        Raises:
            BackendUnavailable: not connected, or the server did not confirm in time.
        """
        if not self.is_connected or self._nc is None:
            raise BackendUnavailable("not connected to NATS")
        try:
            await self._nc.request(reply, payload, timeout=timeout)
        except (nats.errors.Error, TimeoutError) as exc:
            raise BackendUnavailable(f"acknowledgement not confirmed: {exc!r}") from exc

    async def in_progress(self, reply: str) -> None:
        """Tell JetStream the message is still being worked on (restarts its ack wait)."""
        if self.is_connected and self._nc is not None:
            await self._nc.publish(reply, b"+WPI")

    async def kv_get(self, bucket: KeyValueConfig, key: str, timeout: float) -> bytes | None:
        """The value of ``key`` in ``bucket`` (created if missing); None if the key has none.

        Raises:
            BackendUnavailable: not connected, or no answer within ``timeout`` seconds.
        """

        async def get() -> bytes | None:
            store = await self._bucket(bucket)
            try:
                entry = await store.get(key)
            except nats.js.errors.KeyNotFoundError:
                return None
            return entry.value

        return await self._kv_call(get(), bucket, timeout)

    async def kv_put(self, bucket: KeyValueConfig, key: str, value: bytes, timeout: float) -> None:
        """Store ``value`` under ``key`` in ``bucket`` (created if missing) and wait for the ack.

        Raises:
            BackendUnavailable: not connected, or no answer within ``timeout`` seconds.
        """

        async def put() -> None:
            store = await self._bucket(bucket)
            await store.put(key, value)

        await self._kv_call(put(), bucket, timeout)

    async def kv_purge(self, bucket: KeyValueConfig, key: str, timeout: float) -> None:
        """Remove ``key`` from ``bucket`` without a trace (a delete would leave a marker).

        Raises:
            BackendUnavailable: not connected, or no answer within ``timeout`` seconds.
        """

        async def purge() -> None:
            await self._require_js().purge_stream(
                f"KV_{bucket.bucket}", subject=f"$KV.{bucket.bucket}.{key}"
            )

        await self._kv_call(purge(), bucket, timeout)

    async def _bucket(self, config: KeyValueConfig) -> KeyValue:
        store = self._buckets.get(config.bucket)
        if store is None:
            js = self._require_js()
            try:
                store = await js.key_value(config.bucket)
            except nats.js.errors.BucketNotFoundError:
                store = await js.create_key_value(config)
                logger.info("created key-value bucket %s", config.bucket)
            self._buckets[config.bucket] = store
        return store

    async def _kv_call(
        self, call: Coroutine[Any, Any, T], bucket: KeyValueConfig, timeout: float
    ) -> T:
        if not self.is_connected:
            call.close()
            raise BackendUnavailable("not connected to NATS")
        try:
            return await asyncio.wait_for(call, timeout)
        except (nats.errors.Error, TimeoutError) as exc:
            # The bucket may be gone (a wiped server): look it up, or create it, next time.
            self._buckets.pop(bucket.bucket, None)
            raise BackendUnavailable(f"key-value bucket {bucket.bucket}: {exc!r}") from exc

    @property
    def connection(self) -> Client | None:
        """The current nats-py connection (a new one replaces it when nats-py gives one up),
        for callers that pipeline requests on a reply subscription of their own
        (:mod:`eventing.nats.replies`)."""
        return self._nc

    @property
    def jetstream(self) -> ConsumerApi:
        """The consumers of the current connection, for the manager to manage and pull."""
        return ConsumerApi(self._js)

    @property
    def stored(self) -> StoredMessages:
        """The stored messages of the current connection: scanned, followed, read and deleted
        one by one (events, dead letters, ledger records)."""
        return StoredMessages(self._js)

    async def close(self) -> None:
        """Flush and close the connection; stop connecting if still trying. Never raises: a
        connection the server already dropped is simply closed.

        Takes at most about ``2 * _CLOSE_TIMEOUT``: a drain waits for the server to confirm a
        flush, which a server that went away mid-drain never does (nats-py would wait for its
        30 s drain timeout, past honcho's 5 s), and whatever needed that server has failed
        already.
        """
        self._closing = True
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._nc is not None and not self._nc.is_closed:
            try:
                await asyncio.wait_for(self._nc.drain(), _CLOSE_TIMEOUT)
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                logger.debug("%s: drain failed: %r", self._name, exc)
                try:
                    await asyncio.wait_for(self._nc.close(), _CLOSE_TIMEOUT)
                except (nats.errors.Error, OSError, TimeoutError) as closing:
                    # Flushing into a socket the server just reset: the connection is gone
                    # either way, and nothing unacknowledged depended on that flush.
                    logger.debug("%s: close failed: %r", self._name, closing)
                    _abandon(self._nc)

    def _require_js(self) -> JetStreamContext:
        if self._js is None:
            raise BackendUnavailable("not connected to NATS")
        return self._js


def _abandon(nc: Client) -> None:
    """Finish what nats-py's ``close`` skips when its final flush fails (2.16: the flush comes
    before cancelling the subscriptions' tasks and closing the socket), so that no task of the
    connection outlives it."""
    for sub in list(nc._subs.values()):
        task = sub._wait_for_msgs_task
        if task is not None and not task.done():
            task.cancel()
    nc._subs.clear()
    if nc._transport is not None:
        nc._transport.close()  # type: ignore[no-untyped-call]


class _GivenUp(Exception):
    """nats-py closed the connection for good; a new one is due."""


class _NoStream(StreamNotAnswering):
    """No stream listens on the subject at all (as opposed to a slow acknowledgement)."""


def _translate_api_error(exc: Any) -> PublishError:
    description = getattr(exc, "description", None) or str(exc)
    if exc.err_code == _STORE_FAILED or "no space" in description or "maximum" in description:
        return StreamFull(f"the stream is full: {description}")
    # A JetStream 4xx (say, a stream capturing our subjects under another name) is our
    # deployment's fault, never the publisher's, so only server-side codes pass through.
    status = exc.code if isinstance(exc.code, int) and 500 <= exc.code <= 599 else 500
    return BackendRejected(f"JetStream refused the event: {description}", status=status)
