"""The status HTTP API in-process: aiohttp on the test's loop, a real client over loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from eventing.errors import ConfigError
from eventing.settings import ManagerSettings
from eventing.subscriptions.status import View
from manager import operations
from manager.metrics import ManagerMetrics
from manager.status import ApiToken, StatusServer, api_token

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


def serve(
    scenario: Scenario,
    *,
    shown: View = READY,
    token: ApiToken | None = None,
    routes: Sequence[web.RouteDef] = (),
) -> None:
    """Run ``scenario`` against a server showing ``shown`` (a list the scenario may change),
    requiring ``token`` if given, serving ``routes`` beside the status."""

    async def main() -> None:
        views = [shown]
        server = StatusServer(
            "127.0.0.1", 0, ManagerMetrics(), lambda: views[-1], token, routes=routes
        )
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
                "detail": "POST /subscriptions: only GET is served here",
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


TOKEN = "s3cret-token-of-the-manager-api"
GUARDED = ["/metrics", "/subscriptions", "/subscriptions/default/orders", "/nope"]


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n")  # as an editor or `kubectl create secret --from-file` leaves it
    return path


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", f"{TOKEN}"],
    ids=["none", "wrong", "basic", "longer", "empty", "no-scheme"],
)
def test_without_the_token_every_endpoint_but_the_probes_is_a_json_401(
    token_file: Path, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    async def scenario(session: aiohttp.ClientSession, url: str, views: list[View]) -> None:
        for path in GUARDED:
            async with session.get(f"{url}{path}", headers=headers) as response:
                assert response.status == 401, path
                assert response.headers["WWW-Authenticate"] == 'Bearer realm="eventing-manager"'
                body = await response.json()
                assert (body["status"], body["title"]) == (401, "Unauthorized")
                assert "MANAGER_API_TOKEN_FILE" in body["detail"]
                assert TOKEN not in await response.text()
        assert await answer(session, f"{url}/healthz") == (200, "text/plain", b"ok\n")
        assert await answer(session, f"{url}/readyz/") == (200, "text/plain", b"ready\n")

    serve(scenario, token=ApiToken(token_file))


def test_with_the_token_status_and_metrics_answer(token_file: Path) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def scenario(session: aiohttp.ClientSession, url: str, views: list[View]) -> None:
        async with session.get(f"{url}/subscriptions/default/orders", headers=headers) as response:
            assert response.status == 200 and await response.json() == ITEM
        async with session.get(f"{url}/metrics", headers=headers) as response:
            assert response.status == 200
            assert "eventing_ec_health 1.0" in (await response.text()).splitlines()
        async with session.get(f"{url}/nope", headers=headers) as response:
            assert response.status == 404

    serve(scenario, token=ApiToken(token_file))


def test_a_rotated_token_applies_at_the_next_request_and_an_unreadable_one_opens_nothing(
    token_file: Path,
) -> None:
    async def status(session: aiohttp.ClientSession, url: str, token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(f"{url}/subscriptions", headers=headers) as response:
            return response.status

    async def scenario(session: aiohttp.ClientSession, url: str, views: list[View]) -> None:
        token_file.write_text("the-next-token")
        assert await status(session, url, TOKEN) == 401
        assert await status(session, url, "the-next-token") == 200
        token_file.unlink()
        assert await status(session, url, "the-next-token") == 503
        assert await status(session, url, "") == 503
        assert await answer(session, f"{url}/healthz") == (200, "text/plain", b"ok\n")

    serve(scenario, token=ApiToken(token_file))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_on_loopback_the_api_may_go_without_a_token(host: str) -> None:
    assert api_token(ManagerSettings(host=host)) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "manager.example"])
def test_beyond_loopback_a_token_file_is_required(host: str) -> None:
    with pytest.raises(ConfigError) as raised:
        api_token(ManagerSettings(host=host))

    assert set(raised.value.problems) == {"MANAGER_API_TOKEN_FILE"}
    assert f"MANAGER_HOST={host} is not loopback" in str(raised.value)


@pytest.mark.parametrize("content", [None, "", "  \n"], ids=["missing", "empty", "blank"])
def test_a_token_file_that_holds_no_token_is_refused_at_start(
    tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)

    with pytest.raises(ConfigError) as raised:
        api_token(ManagerSettings(host="127.0.0.1", api_token_file=str(path)))

    assert set(raised.value.problems) == {"MANAGER_API_TOKEN_FILE"}


def test_the_manager_refuses_to_start_open_beyond_loopback() -> None:
    """The real entry point: exit 2 with the setting named, before it connects anywhere (the
    NATS URL points at a closed port, which it would otherwise retry forever)."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MANAGER_", "NATS_", "SUBSCRIPTIONS_"))
    }
    result = subprocess.run(
        [sys.executable, "-m", "manager"],
        env={**environ, "MANAGER_HOST": "0.0.0.0", "NATS_URL": "nats://127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert "MANAGER_API_TOKEN_FILE: required since MANAGER_HOST=0.0.0.0" in result.stderr
    assert "Traceback" not in result.stderr


def test_operations_report_their_progress_and_an_unknown_one_is_a_404() -> None:
    registry = operations.Operations()
    replay = registry.start("replay", "default/orders", total=10)
    replay.done = 4

    async def scenario(session: aiohttp.ClientSession, url: str, views: list[View]) -> None:
        async with session.get(f"{url}/operations/{replay.id}") as response:
            shown = await response.json()
            assert (response.status, shown["state"], shown["done"], shown["total"]) == (
                200,
                "running",
                4,
                10,
            )
        replay.finish("replayed 10 events")
        async with session.get(f"{url}/operations/") as response:
            assert [item["state"] for item in (await response.json())["items"]] == ["done"]
        async with session.get(f"{url}/operations/redrive-9") as response:
            assert response.status == 404
            assert "redrive-9" in (await response.json())["detail"]
        async with session.delete(f"{url}/operations") as response:
            assert response.status == 405

    serve(scenario, routes=operations.routes(registry))


def test_finished_operations_beyond_the_kept_ones_are_forgotten() -> None:
    registry = operations.Operations()
    running = registry.start("replay")
    for _ in range(operations.KEPT + 5):
        registry.start("redrive").finish()
    kept = registry.all()
    assert running in kept and len(kept) == operations.KEPT + 1
