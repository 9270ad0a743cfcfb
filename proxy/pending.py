"""Pending: the events a view prepared on a request thread, published by the event loop.

Why: the GIL handed from granian's event loop to a request thread and back costs about as much
CPU as a request's Python (docs/performance.md, "Issue 16: proxy"). A view that waited on its
thread for the PubAcks woke that thread twice, once for the body and once for the outcome; a
view that defers its events returns at once, and :class:`proxy.bodies.BodiesFirst` publishes
them on its loop and answers there, still only after every PubAck. What the request holds
(its turn and its events in flight, :mod:`proxy.admission`) is released once they are settled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eventing.errors import PublishError
from eventing.nats.messages import OutboundMessage

#: The environ key of a request's :class:`Pending`; absent where nothing publishes on a loop
#: (the WSGI app served alone, as in the tests), and the view then publishes on its thread.
KEY = "eventing.pending"

#: Status, headers and body of an answer.
Answer = tuple[int, list[tuple[str, str]], bytes]
#: Records the outcomes (one per message, None: stored); the failure's answer, or None to send
#: the answer the view gave.
Settle = Callable[[list[PublishError | None]], Answer | None]


class Pending:
    """A request's deferred events, what to do with their outcomes, and what to release."""

    __slots__ = ("_releases", "_settle", "messages")

    def __init__(self) -> None:
        self.messages: list[OutboundMessage] | None = None  #: None: the view deferred nothing
        self._settle: Settle | None = None
        self._releases: list[Callable[[], None]] = []

    def defer(self, messages: list[OutboundMessage], settle: Settle) -> None:
        """Leave ``messages`` to the loop; ``settle`` gets their outcomes there."""
        self.messages = messages
        self._settle = settle

    def release_after(self, release: Callable[[], None]) -> None:
        """Call ``release`` once the outcomes are settled (a turn, events in flight)."""
        self._releases.append(release)

    def settle(self, outcomes: list[PublishError | None]) -> Answer | None:
        """Hand the outcomes to the view's ``settle``, then release what the request held."""
        try:
            return self._settle(outcomes) if self._settle is not None else None
        finally:
            for release in self._releases:
                release()


def of(environ: dict[str, Any]) -> Pending | None:
    """The request's Pending, if its events may be left to the loop."""
    pending: Pending | None = environ.get(KEY)
    return pending
