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
from dataclasses import dataclass, field

from aiohttp import web

from eventing.delivery import jobs
from eventing.nats.client import JetStreamClient
from eventing.settings import Settings
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


def leading(context: ApiContext) -> tuple[Dispatcher, jobs.Enqueue] | web.Response:
    """The manager's pulling state and its enqueue, or the 503 to answer while it has none."""
    if context.dispatcher is None or context.enqueue is None:
        return problem(
            503,
            "this manager does not deliver (yet): it waits for the leader Lease, or has just"
            " started; ask again, or ask the leading replica",
        )
    return context.dispatcher, context.enqueue
