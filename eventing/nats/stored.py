"""Reading and removing what a stream stores, without loading it: dead letters, ledger records.

The manager's API browses the dead-letter and ledger streams through :class:`StoredMessages`
(``client.stored``). A scan is a short-lived ephemeral consumer with no acks, read in pages: it
starts at a sequence or a time, is filtered on subjects by the server, and, when only headers
are needed, fetches no bodies (``headers_only``). So a listing costs what it shows, never the
stream's size in memory. Every nats-py error becomes a :class:`~eventing.errors.ConsumerError`
(:class:`~eventing.errors.NotFound` for a missing stream or message).
"""

from __future__ import annotations

import contextlib
import datetime
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventing.errors import ConsumerError
from eventing.nats.consumers import _translated

_PAGE = 256  #: messages per fetch of a scan
_FETCH_TIMEOUT = 2.0  #: a page that is pending arrives at once; this only bounds a lost one
_SCAN_IDLE = 30.0  #: seconds after which the server removes a scan's consumer left behind


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message as its stream stores it (``data`` is empty for a headers-only read)."""

    sequence: int
    subject: str
    headers: dict[str, str]
    data: bytes
    time: float  #: when the stream stored it (Unix seconds)


class StoredMessages:
    """The stored messages of the connection that is up right now (``None``: not connected)."""

    def __init__(self, js: JetStreamContext | None) -> None:
        self._js = js

    async def scan(
        self,
        stream: str,
        subjects: Sequence[str],
        *,
        after: int = 0,
        since: float | None = None,
        headers_only: bool = False,
    ) -> AsyncGenerator[StoredMessage, None]:
        """The messages of ``stream`` on ``subjects``, oldest first, from the sequence after
        ``after`` (or the first stored at or after ``since``). A caller that stops early
        closes the iteration (``contextlib.aclosing``), which deletes the scan's consumer.

        Raises:
            NotFound: no such stream.
            ConsumerError: the server did not answer, or pending messages did not arrive.
        """
        js = self._require()
        policy, sequence, moment = _start(after, since)
        config = ConsumerConfig(
            name=f"scan-{uuid.uuid4().hex}",
            ack_policy=AckPolicy.NONE,
            headers_only=headers_only or None,
            inactive_threshold=_SCAN_IDLE,
            filter_subjects=list(subjects),
            mem_storage=True,
            deliver_policy=policy,
            opt_start_seq=sequence,
            opt_start_time=moment,
        )
        with _translated():
            info = await js.add_consumer(stream, config)
        try:
            if not info.num_pending:
                return
            with _translated():
                subscription = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
            try:
                remaining = info.num_pending
                while remaining:
                    with _translated():
                        try:
                            page = await subscription.fetch(min(_PAGE, remaining), _FETCH_TIMEOUT)
                        except TimeoutError:
                            page = []
                    if not page:
                        # Deleted since they were counted, or lost: never a silently short
                        # answer, which would end a listing's pages.
                        with _translated():
                            remaining = (await js.consumer_info(stream, info.name)).num_pending
                        if remaining:
                            raise ConsumerError(
                                f"reading {stream} stopped: {remaining} message(s) pending did"
                                f" not arrive within {_FETCH_TIMEOUT:g}s"
                            )
                    for message in page:
                        metadata = message.metadata
                        remaining = metadata.num_pending
                        yield StoredMessage(
                            sequence=metadata.sequence.stream,
                            subject=message.subject,
                            headers=dict(message.headers or {}),
                            data=b"" if headers_only else message.data,
                            time=metadata.timestamp.timestamp(),
                        )
            finally:
                with _translated():
                    await subscription.unsubscribe()
        finally:
            # The server removes one left behind after _SCAN_IDLE anyway.
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await js.delete_consumer(stream, info.name)

    async def get(self, stream: str, sequence: int) -> StoredMessage:
        """The message at ``sequence``.

        Raises:
            NotFound: no such message (never stored, deleted, or expired).
        """
        js = self._require()
        with _translated():
            raw = await js.get_msg(stream, sequence)
        stored = raw.time.timestamp() if raw.time is not None else 0.0
        return StoredMessage(
            sequence, raw.subject or "", dict(raw.headers or {}), raw.data or b"", stored
        )

    async def delete(self, stream: str, sequence: int) -> bool:
        """Remove the message at ``sequence``; False if it was not there (any more)."""
        js = self._require()
        try:
            with _translated():
                return await js.delete_msg(stream, sequence)
        except ConsumerError as exc:
            if isinstance(exc.__cause__, nats.js.errors.NotFoundError) or "not found" in str(exc):
                return False
            raise

    def _require(self) -> JetStreamContext:
        if self._js is None:
            raise ConsumerError("not connected to NATS")
        return self._js


def _start(
    after: int, since: float | None
) -> tuple[DeliverPolicy, int | None, datetime.datetime | None]:
    if after:
        return DeliverPolicy.BY_START_SEQUENCE, after + 1, None
    if since is not None:
        moment = datetime.datetime.fromtimestamp(since, datetime.UTC)
        return DeliverPolicy.BY_START_TIME, None, moment
    return DeliverPolicy.ALL, None, None
