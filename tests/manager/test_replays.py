"""The replay endpoint's answers to what it cannot start: a bad body, no archive, no leader.
Replays themselves run against a real system (tests/integration/test_replay.py)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from eventing.nats.client import JetStreamClient
from eventing.settings import Settings
from manager import replays
from manager.api import ApiContext
from manager.board import StatusBoard
from manager.metrics import ManagerMetrics
from tests.manager.test_status import serve

NOW = 1_800_000_000.0
EXPECTED = (
    'expected a JSON object with one of "since" (an RFC 3339 time such as'
    ' 2026-12-01T10:00:00Z, or a duration ago such as 15m or 2h) and "sequence" (an archive'
    " stream sequence, an integer from 1)"
)


def _problem(body: bytes) -> tuple[int, dict[str, Any]]:
    answer = replays._start(body, NOW)
    assert not isinstance(answer, tuple), answer
    return answer.status, json.loads(answer.body)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "start"),
    [
        (b'{"since": "15m"}', (NOW - 900, None)),
        (b'{"since": "2026-12-01T10:00:00Z"}', (1_796_119_200.0, None)),
        (b'{"sequence": 42}', (None, 42)),
    ],
)
def test_a_replay_starts_at_a_moment_or_an_archive_sequence(
    body: bytes, start: tuple[float | None, int | None]
) -> None:
    assert replays._start(body, NOW) == start


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"", f"the body is null; {EXPECTED}"),
        (b"{", f"the body is no JSON; {EXPECTED}"),
        (b"{}", f"the body is {{}}; {EXPECTED}"),
        (
            b'{"since": "1m", "sequence": 3}',
            f'the body is {{"since": "1m", "sequence": 3}}; {EXPECTED}',
        ),
        (b'{"from": "1m"}', f'the body is {{"from": "1m"}}; {EXPECTED}'),
        (b'["1m"]', f'the body is ["1m"]; {EXPECTED}'),
    ],
)
def test_a_body_that_is_not_one_start_says_what_is_expected(body: bytes, detail: str) -> None:
    assert _problem(body) == (
        400,
        {"title": "Bad Request", "status": 400, "detail": detail, "expected": EXPECTED},
    )


@pytest.mark.parametrize(
    ("body", "field", "detail"),
    [
        (b'{"sequence": 0}', "sequence", "sequence: expected an integer from 1, got 0"),
        (b'{"sequence": "7"}', "sequence", 'sequence: expected an integer from 1, got "7"'),
        (b'{"sequence": true}', "sequence", "sequence: expected an integer from 1, got true"),
        (
            b'{"since": "yesterday"}',
            "since",
            "since: expected an RFC 3339 time with its offset (2026-12-01T10:00:00Z) or a"
            " duration ago (15m, 2h), got 'yesterday'",
        ),
        (b'{"since": 15}', "since", "since: expected a string, an RFC 3339 time"),
    ],
)
def test_a_bad_start_names_its_field(body: bytes, field: str, detail: str) -> None:
    status, document = _problem(body)
    assert (status, document["field"]) == (400, field)
    assert document["detail"].startswith(detail)


@pytest.mark.parametrize(
    ("env", "status", "detail"),
    [
        (
            {"EVENT_ARCHIVE_MAX_AGE": "0"},
            409,
            "there is no archive to replay from: EVENT_ARCHIVE_MAX_AGE is 0",
        ),
        ({}, 503, "this manager does not deliver (yet)"),
    ],
)
def test_without_an_archive_or_before_leading_nothing_is_started(
    env: dict[str, str], status: int, detail: str
) -> None:
    settings = Settings.from_environ(env)
    metrics = ManagerMetrics()
    context = ApiContext(
        settings,
        JetStreamClient(settings.nats, settings.stream, name="test"),  # never connected
        StatusBoard.for_settings(settings, metrics),
    )
    replayer = replays.Replayer(context, metrics)
    answers: list[tuple[int, dict[str, Any]]] = []

    async def scenario(session: aiohttp.ClientSession, url: str, views: Any) -> None:
        address = f"{url}/subscriptions/default/orders/replay"
        async with session.post(address, json={"since": "10m"}) as response:
            answers.append((response.status, await response.json()))

    serve(scenario, routes=replayer.routes())

    [(got, document)] = answers
    assert got == status
    assert document["detail"].startswith(detail)
    assert context.operations.all() == []
