"""Long operations the API starts (replays, redrives) and how far each has come.

A request that starts one gets its id at once (202); ``GET /operations/{id}`` reports its
progress, which the command-line tool draws as a progress bar. Kept in memory, the last
:data:`KEPT` of them: an operation is as long-lived as the process that runs it.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from eventing.units import rfc3339
from manager.status import json_response, problem

KEPT = 100  #: finished operations remembered
STATES = ("running", "done", "failed")


@dataclass(slots=True)
class Operation:
    """One replay or redrive: ``total`` events to hand over (0 while not known yet)."""

    id: str
    kind: str  #: ``replay`` or ``redrive``
    subscription: str  #: namespace/name, or ``""`` for a redrive across subscriptions
    total: int = 0
    done: int = 0  #: events handed to the workers so far
    skipped: int = 0  #: events that could not be handed over (``detail`` says why)
    expired: int = 0  #: events asked for that retention had already removed
    state: str = "running"
    detail: str = ""
    started: float = field(default_factory=time.time)
    ended: float | None = None

    def finish(self, detail: str = "", *, failed: bool = False) -> None:
        self.state = "failed" if failed else "done"
        self.detail = detail or self.detail
        self.ended = time.time()

    def to_dict(self) -> dict[str, Any]:
        """The API's form: times in RFC 3339, as every time it shows."""
        shown = dataclasses.asdict(self)
        shown["started"] = rfc3339(self.started)
        shown["ended"] = None if self.ended is None else rfc3339(self.ended)
        return shown


class Operations:
    """The operations of this process, newest last."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, Operation] = OrderedDict()
        self._numbers = itertools.count(1)

    def start(self, kind: str, subscription: str = "", total: int = 0) -> Operation:
        operation = Operation(f"{kind}-{next(self._numbers)}", kind, subscription, total)
        self._items[operation.id] = operation
        self._forget_old()
        return operation

    def get(self, operation_id: str) -> Operation | None:
        return self._items.get(operation_id)

    def all(self) -> list[Operation]:
        self._forget_old()
        return list(self._items.values())

    def _forget_old(self) -> None:
        finished = [key for key, item in self._items.items() if item.state != "running"]
        for key in finished[: max(0, len(finished) - KEPT)]:
            del self._items[key]


def routes(operations: Operations) -> list[web.RouteDef]:
    """``GET /operations`` and ``GET /operations/{id}``."""

    async def listing(request: web.Request) -> web.Response:
        return json_response({"items": [item.to_dict() for item in operations.all()]})

    async def one(request: web.Request) -> web.Response:
        operation = operations.get(request.match_info["id"])
        if operation is None:
            detail = f"no operation {request.match_info['id']} (this process keeps the last {KEPT})"
            return problem(404, detail)
        return json_response(operation.to_dict())

    return [web.get("/operations", listing), web.get("/operations/{id}", one)]
