"""Requests pipelined on one reply subscription: a round's messages published together, their
replies awaited together, with one timer.

nats-py's ``request`` makes a reply token, a future, a timeout (``wait_for``) and a done callback
per call, and a JetStream publish adds its own; the workers confirmed every ack that way, in a
task of ``asyncio.gather``, and published every ledger record that way in a task of its own:
the NATS loop thread took a third of a worker's CPU (``py-spy record --gil``). Here every message
of a round gets a reply subject on one wildcard subscription (``<inbox>.<n>``), and the round
has one timer: :meth:`Replies.confirm` waits for all of its replies, :meth:`Replies.send` reports
their outcome to a callback without anybody waiting.

A reply confirms its message unless it is a "no responders" status (nothing listens on the
subject: a consumer or stream that is gone, or a cluster between leaders) or a JetStream API
error (a PubAck that refuses the message); a message without a reply within the timeout is not
confirmed either. The subscription follows the connection: a connection nats-py gave up for a
new one gets a new subscription on the next round.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Sequence

from nats.aio.client import Client
from nats.aio.msg import Msg

from eventing.errors import BackendUnavailable, PublishError
from eventing.nats.client import JetStreamClient

#: One message of a round: subject, payload, headers (None: none)
Outgoing = tuple[str, bytes, dict[str, str] | None]
Results = list[BaseException | None]

_NO_RESPONDERS = "503"


class NoResponders(BackendUnavailable):
    """Nothing listens on the message's subject (a stream or consumer gone, or between leaders)."""


class _Round:
    """The replies one round waits for; ``finished`` hears the results once, when the last
    reply arrived or the timer ran out."""

    __slots__ = ("finished", "left", "results", "timer", "tokens")

    def __init__(self, size: int, finished: Callable[[Results], None]) -> None:
        self.results: Results = [None] * size
        self.left = size
        self.tokens: list[str] = []
        self.finished = finished
        self.timer: asyncio.TimerHandle | None = None


class Replies:
    """Pipelined requests on ``client``'s current connection."""

    def __init__(self, client: JetStreamClient) -> None:
        self._client = client
        self._subscribed: Client | None = None  #: the connection the subscription is on
        self._prefix = ""
        self._subscribing = asyncio.Lock()
        self._numbers = itertools.count()
        self._waiting: dict[str, tuple[_Round, int]] = {}  #: reply token -> round, index

    @property
    def pending(self) -> int:
        """Messages whose reply has not arrived and whose round has not timed out."""
        return len(self._waiting)

    async def confirm(self, messages: Sequence[Outgoing], timeout: float) -> Results:
        """Publish ``messages`` and wait, at most ``timeout`` seconds in all, for their replies;
        one result per message: None if confirmed, else why not.

        Raises:
            BackendUnavailable: not connected (nothing was sent).
        """
        answered: asyncio.Future[Results] = asyncio.get_running_loop().create_future()

        def finished(results: Results) -> None:
            if not answered.done():
                answered.set_result(results)

        await self.send(messages, timeout, finished)
        return await answered

    async def send(
        self, messages: Sequence[Outgoing], timeout: float, finished: Callable[[Results], None]
    ) -> None:
        """Publish ``messages``; ``finished`` gets their results (as :meth:`confirm` returns
        them) once every reply arrived or ``timeout`` seconds passed.

        Raises:
            BackendUnavailable: not connected (nothing was sent, ``finished`` is not called).
        """
        nc, prefix = await self._ready()
        round_ = _Round(len(messages), finished)
        waiting, numbers = self._waiting, self._numbers
        for index, (subject, payload, headers) in enumerate(messages):
            token = str(next(numbers))
            round_.tokens.append(token)
            waiting[token] = (round_, index)
            try:
                await nc.publish(subject, payload, reply=prefix + token, headers=headers)
            except Exception as exc:  # nats-py's buffer is full, or the connection closed
                del waiting[token]
                self._settle(round_, index, BackendUnavailable(f"not sent: {exc!r}"))
        if round_.left:
            round_.timer = asyncio.get_running_loop().call_later(
                timeout, self._expire, round_, timeout
            )

    async def _ready(self) -> tuple[Client, str]:
        """The current connection with the reply subscription on it."""
        nc = self._client.connection
        if nc is None or not nc.is_connected:
            raise BackendUnavailable("not connected to NATS")
        if nc is not self._subscribed:
            async with self._subscribing:
                if nc is not self._subscribed:
                    prefix = f"{nc.new_inbox()}."
                    await nc.subscribe(prefix + "*", cb=self._received)
                    self._subscribed, self._prefix = nc, prefix
        return nc, self._prefix

    async def _received(self, msg: Msg) -> None:
        waiter = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if waiter is not None:
            self._settle(waiter[0], waiter[1], _refusal(msg))

    def _settle(self, round_: _Round, index: int, result: BaseException | None) -> None:
        round_.results[index] = result
        round_.left -= 1
        if round_.left == 0:
            if round_.timer is not None:
                round_.timer.cancel()
            round_.finished(round_.results)

    def _expire(self, round_: _Round, timeout: float) -> None:
        unanswered = BackendUnavailable(f"not confirmed within {timeout:g}s")
        for index, token in enumerate(round_.tokens):
            if self._waiting.pop(token, None) is not None:
                round_.results[index] = unanswered
        round_.left = 0
        round_.finished(round_.results)


def _refusal(msg: Msg) -> BaseException | None:
    """Why a reply does not confirm its message (None: it does)."""
    headers = msg.headers
    if headers and headers.get("Status") == _NO_RESPONDERS:
        return NoResponders(f"no responders on {msg.subject}")
    data = msg.data
    if b'"error"' in data:
        try:
            error = json.loads(data).get("error")
        except (ValueError, AttributeError):
            return None
        if error:
            return PublishError(f"JetStream refused the message: {error}")
    return None
