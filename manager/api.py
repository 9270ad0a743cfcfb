"""What the operations endpoints of the manager's API work with, and how they are routed.

The status API (:mod:`manager.status`) serves from the moment the process starts; the modules
that answer operations (the delivery history, dead letters, replays, the operations in
progress) each give a list of routes built on one :class:`ApiContext`. Their handlers find the
connection at once and the manager's pulling state once it leads: until then
(:attr:`ApiContext.dispatcher` is None, a replica waiting for the Lease, say) an endpoint that
needs it answers 503 (:func:`leading`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from eventing.delivery import jobs
from eventing.nats.client import JetStreamClient
from eventing.settings import Settings
from eventing.tasks import cancel_and_wait
from manager.board import StatusBoard
from manager.operations import Operations
from manager.pulling import Dispatcher
from manager.status import problem


@dataclass(slots=True)
class ApiContext:
    """Everything an operations handler may use; one per manager process."""

    settings: Settings
    client: JetStreamClient
    board: StatusBoard
    operations: Operations = field(default_factory=Operations)
    #: set once the manager leads: the consumers it pulls and where their events go
    dispatcher: Dispatcher | None = None
    #: set once the manager leads: enqueues signed jobs (blocking: call it in a thread)
    enqueue: jobs.Enqueue | None = None
    #: set when the manager stops: endpoints that stream (the ledger's tail) end then
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _running: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``work`` (a replay, a redrive) beyond the request that started it, owned here
        so that :meth:`stop_work` ends it before the connection closes."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    async def stop_work(self) -> None:
        """Cancel the work :meth:`spawn` started and wait for it to end. Its consumers stay
        until JetStream's inactivity threshold removes them, or the next run of the same
        kind deletes them; its operations end unfinished."""
        await cancel_and_wait(list(self._running))


def leading(context: ApiContext) -> tuple[Dispatcher, jobs.Enqueue] | web.Response:
    """The manager's pulling state and its enqueue, or the 503 to answer while it has none."""
    if context.dispatcher is None or context.enqueue is None:
        return problem(
            503,
            "this manager does not deliver (yet): it waits for the leader Lease, or has just"
            " started; ask again, or ask the leading replica",
        )
    return context.dispatcher, context.enqueue
