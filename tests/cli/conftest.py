"""A fake of the manager's operations API (our own seam): an aiohttp app on loopback serving
THE API's documents as issue 15's brief defines them, and recording what the tool sent."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

TOKEN = "fake-manager-token"


@dataclass
class Seen:
    """One request the fake answered."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    authorization: str | None


def _problem(status: int, detail: str) -> web.Response:
    titles = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 409: "Conflict"}
    body = {"title": titles[status], "status": status, "detail": detail}
    return web.json_response(body, status=status)


def attempt(number: int, status: int | None, kind: str = "answered", **more: Any) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "number": number,
        "time": f"2026-12-01T10:00:0{number}.000Z",
        "seconds": 0.25 * number,
        "kind": kind,
    }
    if status is not None:
        shown["status"] = status
    return {**shown, **more}


def dead_letter(sequence: int) -> dict[str, Any]:
    return {
        "sequence": sequence,
        "time": f"2026-12-01T09:00:0{sequence}.000Z",
        "subscription": "default/orders",
        "type": "order.created.v1",
        "source": "/shop",
        "id": f"order-{sequence}",
        "reason": "503 Service Unavailable after 6 attempts",
        "status": 503,
        "attempts": 6,
        "sink": "http://orders.example/events",
    }


def record(event_id: str, outcome: str, status: int | None) -> dict[str, Any]:
    """A ledger record as ``Record.shown()`` gives it."""
    return {
        "subscription": "default/orders",
        "source": "/shop",
        "id": event_id,
        "type": "order.created.v1",
        "sequence": 7,
        "origin": "live",
        "outcome": outcome,
        "time": "2026-12-01T10:00:01.000Z",
        "attempt": attempt(1, status, error="" if status == 204 else "sink answered 500"),
        "reason": "",
    }


SUBSCRIPTIONS = {
    "items": [
        {
            "apiVersion": "eventing.kyma-project.io/v1alpha2",
            "kind": "Subscription",
            "metadata": {"namespace": "default", "name": "orders"},
            "spec": {"sink": "http://orders.example/events", "types": ["order.created.v1"]},
            "status": {
                "ready": True,
                "types": [],
                "conditions": [],
                "delivery": {
                    "delivered": 120,
                    "deadLettered": 3,
                    "pending": 4,
                    "retrying": 2,
                    "lastError": {
                        "time": "2026-12-01T10:00:00.000Z",
                        "status": 503,
                        "reason": "sink answered 503",
                    },
                    "failingSince": "2026-12-01T09:58:00.000Z",
                },
            },
        },
        {
            "apiVersion": "eventing.kyma-project.io/v1alpha2",
            "kind": "Subscription",
            "metadata": {"namespace": "shop", "name": "audit"},
            "spec": {"sink": "http://audit.example/", "types": ["order.created.v1"]},
            "status": {
                "ready": False,
                "types": [],
                "conditions": [],
                "delivery": {
                    "delivered": 0,
                    "deadLettered": 0,
                    "pending": 0,
                    "retrying": 0,
                    "lastError": None,
                    "failingSince": None,
                },
            },
        },
    ],
    "unreadable": [{"file": "broken.yaml", "problem": "not YAML"}],
}

EVENT = {
    "source": "/shop",
    "id": "order-1",
    "type": "order.created.v1",
    "subscriptions": {
        "default/orders": {
            "outcome": "delivered",
            "sequence": 7,
            "reason": "",
            "attempts": [
                attempt(1, 500, error="", answer="database down"),
                attempt(2, None, "timeout", error="no answer within 10s"),
                attempt(3, 204),
            ],
        },
        "shop/audit": {"outcome": "pending", "sequence": 7, "reason": "", "attempts": []},
    },
}


@dataclass
class FakeManager:
    """The fake's state; tests change it before running a command."""

    url: str = ""
    token_file: Path = Path()
    seen: list[Seen] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(
        default_factory=lambda: [dead_letter(n) for n in range(1, 6)]
    )
    page_cap: int = 2  #: a page holds at most this many, whatever limit asks (the API may)
    #: how an operation unfolds: one document per GET /operations/{id}, the last one repeated
    steps: list[dict[str, Any]] = field(default_factory=list)
    tail_records: list[dict[str, Any]] = field(default_factory=list)
    tail_stays_open: bool = False
    _polls: int = 0

    def requests_to(self, path: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.path == path]

    def app(self) -> web.Application:
        @web.middleware
        async def record_and_guard(request: web.Request, handler: Any) -> web.StreamResponse:
            body = await request.json() if request.can_read_body else None
            authorization = request.headers.get("Authorization")
            self.seen.append(
                Seen(request.method, request.path, dict(request.query), body, authorization)
            )
            if authorization != f"Bearer {TOKEN}":
                return _problem(401, "expected the header Authorization: Bearer <the token>")
            answer: web.StreamResponse = await handler(request)
            return answer

        app = web.Application(middlewares=[record_and_guard])
        app.router.add_get("/subscriptions", self._subscriptions)
        app.router.add_get("/events", self._event)
        app.router.add_get("/deadletters", self._dead_letters)
        app.router.add_get("/deadletters/{sequence}", self._dead_letter)
        app.router.add_post("/deadletters/redrive", self._start)
        app.router.add_post("/deadletters/purge", self._purge)
        app.router.add_post("/subscriptions/{namespace}/{name}/replay", self._start)
        app.router.add_get("/subscriptions/{namespace}/{name}/tail", self._tail)
        app.router.add_get("/operations/{id}", self._operation)
        return app

    async def _subscriptions(self, request: web.Request) -> web.Response:
        return web.json_response(SUBSCRIPTIONS)

    async def _event(self, request: web.Request) -> web.Response:
        if (request.query.get("source"), request.query.get("id")) != ("/shop", "order-1"):
            return _problem(404, "nothing is known of event 'nope' from '/shop'")
        return web.json_response(EVENT)

    async def _dead_letters(self, request: web.Request) -> web.Response:
        after = int(request.query.get("after", 0))
        limit = min(int(request.query.get("limit", 100)), self.page_cap)
        later = [item for item in self.dead_letters if item["sequence"] > after]
        page = later[:limit]
        more = len(later) > limit
        return web.json_response({"items": page, "next": page[-1]["sequence"] if more else None})

    async def _dead_letter(self, request: web.Request) -> web.Response:
        sequence = int(request.match_info["sequence"])
        found = [item for item in self.dead_letters if item["sequence"] == sequence]
        if not found:
            return _problem(404, f"no dead letter {sequence} in sap-dlq")
        event = {"specversion": "1.0", "id": "order-1", "source": "/shop", "data": {"n": 1}}
        attempts = [attempt(1, 503), attempt(2, 503)]
        return web.json_response({**found[0], "event": event, "attempts": attempts})

    async def _start(self, request: web.Request) -> web.Response:
        if request.path.endswith("/replay") and request.match_info["name"] == "archive-off":
            return _problem(409, "the archive is off (EVENT_ARCHIVE_MAX_AGE=0): nothing to replay")
        self._polls = 0
        return web.json_response({"operation": self.steps[0]}, status=202)

    async def _operation(self, request: web.Request) -> web.Response:
        self._polls += 1
        step = self.steps[min(self._polls, len(self.steps) - 1)]
        if request.match_info["id"] != step["id"]:
            return _problem(404, f"no operation {request.match_info['id']}")
        return web.json_response(step)

    async def _purge(self, request: web.Request) -> web.Response:
        return web.json_response({"purged": 2})

    async def _tail(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["name"] != "orders":
            return _problem(404, f"no subscription {request.match_info['namespace']}/nope")
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for line in self.tail_records:
            await response.write(json.dumps(line).encode() + b"\n")
        while self.tail_stays_open:
            await asyncio.sleep(0.05)
        await response.write_eof()
        return response


def operation(state: str, done: int, total: int, **more: Any) -> dict[str, Any]:
    """An operation as ``Operation.to_dict()`` gives it."""
    document = {
        "id": "redrive-1",
        "kind": "redrive",
        "subscription": "default/orders",
        "total": total,
        "done": done,
        "skipped": 0,
        "expired": 0,
        "state": state,
        "detail": "",
        "started": "2026-12-01T10:00:00.000Z",
        "ended": None if state == "running" else "2026-12-01T10:00:01.000Z",
    }
    return {**document, **more}


@pytest.fixture
def fake_manager(tmp_path: Path) -> Iterator[FakeManager]:
    """The fake, served on a free loopback port from its own thread and loop."""
    fake = FakeManager()
    fake.token_file = tmp_path / "manager-token"
    fake.token_file.write_text(TOKEN + "\n")
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(fake.app())
    listener = socket.create_server(("127.0.0.1", 0))
    fake.url = f"http://127.0.0.1:{listener.getsockname()[1]}"

    async def serve() -> None:
        await runner.setup()
        await web.SockSite(runner, listener).start()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    yield fake
    fake.tail_stays_open = False
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    listener.close()
    loop.close()
