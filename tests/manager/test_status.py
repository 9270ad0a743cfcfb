"""The status HTTP API in-process: aiohttp on the test's loop, a real client over loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from eventing.subscriptions.status import View
from manager.metrics import ManagerMetrics
from manager.status import StatusServer

ITEM: dict[str, Any] = {
    "apiVersion": "eventing.kyma-project.io/v1alpha2",
    "kind": "Subscription",
    "metadata": {"namespace": "default", "name": "orders"},
    "status": {"ready": True},
}
READY = View(
    items=(ITEM,),
    ready=True,
    by_key={"default/orders": ITEM},
    unreadable=({"file": "bad.yaml", "problem": "not a regular file"},),
)

Scenario = Callable[[aiohttp.ClientSession, str, list[View]], Awaitable[None]]


def serve(scenario: Scenario, *, shown: View = READY) -> None:
    """Run ``scenario`` against a server showing ``shown`` (a list the scenario may change)."""

    async def main() -> None:
        views = [shown]
        server = StatusServer("127.0.0.1", 0, ManagerMetrics(), lambda: views[-1])
        await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                await scenario(session, f"http://127.0.0.1:{server.port}", views)
        finally:
            await server.close()

    asyncio.run(main())


async def answer(session: aiohttp.ClientSession, url: str) -> tuple[int, str, bytes]:
    async with session.get(url) as response:
        return response.status, response.headers["Content-Type"], await response.read()


def test_health_and_readiness_follow_the_view() -> None:
    async def scenario(session: aiohttp.ClientSession, url: str, views: list[View]) -> None:
        assert await answer(session, f"{url}/healthz") == (200, "text/plain", b"ok\n")
        assert await answer(session, f"{url}/readyz") == (500, "text/plain", b"not ready\n")
        views.append(READY)
        assert await answer(session, f"{url}/readyz") == (200, "text/plain", b"ready\n")

    serve(scenario, shown=View())


def test_subscriptions_list_every_item_and_the_unreadable_files() -> None:
    async def scenario(session: aiohttp.ClientSession, url: str, views: list[View]) -> None:
        async with session.get(f"{url}/subscriptions") as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/json"
            assert await response.json() == {
                "items": [ITEM],
                "unreadable": [{"file": "bad.yaml", "problem": "not a regular file"}],
            }

    serve(scenario)


def test_one_subscription_by_namespace_and_name_or_a_json_404_naming_it() -> None:
    async def scenario(session: aiohttp.ClientSession, url: str, views: list[View]) -> None:
        async with session.get(f"{url}/subscriptions/default/orders") as response:
            assert response.status == 200 and await response.json() == ITEM
        async with session.get(f"{url}/subscriptions/default/missing") as response:
            assert response.status == 404
            assert response.headers["Content-Type"] == "application/json"
            assert await response.json() == {
                "title": "Not Found",
                "status": 404,
                "detail": "no subscription default/missing",
            }

    serve(scenario)


@pytest.mark.parametrize("path", ["/", "/nope", "/subscriptions/default", "/subscriptions/a/b/c"])
def test_an_unknown_path_is_a_json_404_naming_it(path: str) -> None:
    async def scenario(session: aiohttp.ClientSession, url: str, views: list[View]) -> None:
        async with session.get(f"{url}{path}") as response:
            assert response.status == 404
            assert await response.json() == {
                "title": "Not Found",
                "status": 404,
                "detail": f"no such endpoint: {path}",
            }

    serve(scenario)


def test_a_method_other_than_get_is_a_json_405() -> None:
    async def scenario(session: aiohttp.ClientSession, url: str, views: list[View]) -> None:
        async with session.post(f"{url}/subscriptions", data=b"{}") as response:
            assert response.status == 405
            assert await response.json() == {
                "title": "Method Not Allowed",
                "status": 405,
                "detail": "POST /subscriptions: only GET is served",
            }

    serve(scenario)


def test_a_trailing_slash_reaches_the_same_endpoint() -> None:
    async def scenario(session: aiohttp.ClientSession, url: str, views: list[View]) -> None:
        async with session.get(f"{url}/subscriptions/default/orders/") as response:
            assert response.status == 200 and await response.json() == ITEM
        assert await answer(session, f"{url}/healthz/") == (200, "text/plain", b"ok\n")
        async with session.get(f"{url}/nope/") as response:
            assert (await response.json())["detail"] == "no such endpoint: /nope"

    serve(scenario)


def test_metrics_are_prometheus_text_from_the_managers_registry() -> None:
    async def scenario(session: aiohttp.ClientSession, url: str, views: list[View]) -> None:
        status, content_type, body = await answer(session, f"{url}/metrics")
        assert (status, content_type) == (200, CONTENT_TYPE_LATEST)
        assert "eventing_ec_health 1.0" in body.decode().splitlines()

    serve(scenario)


def test_a_taken_port_is_an_oserror_at_start_and_close_frees_the_port() -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(OSError):
                await StatusServer("127.0.0.1", port, ManagerMetrics(), View).start()
        server = StatusServer("127.0.0.1", 0, ManagerMetrics(), View)
        await server.start()
        port = server.port
        await server.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    asyncio.run(main())
