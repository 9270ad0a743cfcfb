"""The fast route of :mod:`proxy.publishing`: which requests it answers on the loop, and that each
answer, stored message and metric is the one Flask's path gives (the same request served by a
:class:`proxy.bodies.BodiesFirst` with the route and without it). Against granian and a real
nats-server: tests/integration/test_publish_on_loop.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from eventing.errors import Overloaded, PublishError
from eventing.nats.messages import OutboundMessage
from eventing.settings import Settings
from proxy import bodies, create_app
from testing.tokens import Issuer
from tests.proxy.conftest import RecordingPublisher
from tests.proxy.test_bodies import FakeHeaders, FakeScope

KEYS = """
- name: orders-service
  key: orders-key
  sources: ["orders"]
  types: ["order.*"]
"""
BINARY = [
    ("ce-specversion", "1.0"),
    ("ce-id", "e-1"),
    ("ce-source", "orders"),
    ("ce-type", "order.created.v1"),
    ("content-type", "application/json"),
    ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
]
BODY = b'{"order":1}'


class FakeProtocol:
    """Granian's RSGI protocol: the body in ``chunks``, the answer recorded."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks
        self.answer: tuple[int, list[tuple[str, str]], bytes] | None = None

    async def _stream(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream()

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.answer = (status, headers, body)


class Served:
    """The proxy app behind a BodiesFirst, with or without the fast route; what it stored and
    how often a request reached the WSGI app."""

    def __init__(self, *, at_once: bool, env: dict[str, str]) -> None:
        self.stored: list[OutboundMessage] = []
        self.app_calls = 0
        self.fail: PublishError | None = None
        settings = Settings.from_environ(
            {"MAX_REQUEST_SIZE": "4096", "PROXY_PUBLISH_ON_LOOP": "on" if at_once else "off", **env}
        )
        self.flask = create_app(settings, publisher=RecordingPublisher())
        self.metrics = self.flask.extensions["eventing.metrics"]

        def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            self.app_calls += 1
            return self.flask(environ, start_response)

        self.server = bodies.BodiesFirst(
            counted,
            threads=4,
            limits=bodies.BodyLimits(timeout=10.0, min_rate=1000, max_size=4096),
            metrics=self.metrics,
            publish=self._publish,
            at_once=self.flask.extensions["eventing.publishing"].at_once,
        )

    async def _publish(self, messages: list[OutboundMessage]) -> list[PublishError | None]:
        if self.fail is not None:
            return [self.fail] * len(messages)
        self.stored += messages
        return [None] * len(messages)

    def send(
        self,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        path: str = "/publish",
        method: str = "POST",
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        length = [("content-length", str(len(body)))]
        scope = FakeScope(FakeHeaders([*headers, *length]), path=path, method=method)
        protocol = FakeProtocol([body[:5], body[5:]])
        asyncio.run(self.server.__rsgi__(scope, protocol))  # type: ignore[arg-type]
        assert protocol.answer is not None
        return protocol.answer

    def counts(self) -> list[str]:
        """Every sample but the durations' (their sums and buckets are timings)."""
        text = generate_latest(self.metrics.registry).decode()
        return [
            line
            for line in text.splitlines()
            if not line.startswith("#")
            and not any(part in line for part in ("_bucket", "_sum", "_created"))
        ]


def _both(env: dict[str, str] | None = None) -> tuple[Served, Served]:
    return Served(at_once=True, env=env or {}), Served(at_once=False, env=env or {})


def _same(
    fast: Served, flask: Served, headers: list[tuple[str, str]], body: bytes, **request: Any
) -> tuple[int, list[tuple[str, str]], bytes]:
    answer = fast.send(headers, body, **request)
    assert answer == flask.send(headers, body, **request)
    assert [(m.subject, m.payload, m.headers) for m in fast.stored] == [
        (m.subject, m.payload, m.headers) for m in flask.stored
    ]
    assert fast.counts() == flask.counts()
    return answer


def test_a_binary_publish_is_answered_on_the_loop_as_flask_answers_it() -> None:
    fast, flask = _both()
    assert _same(fast, flask, BINARY, BODY) == (204, [], b"")
    assert (fast.app_calls, flask.app_calls) == (0, 1)  # the fast route never reached Flask
    assert len(fast.stored) == 1
    stored = json.loads(fast.stored[0].payload)
    assert stored["data"] == {"order": 1} and stored["traceparent"] == BINARY[-1][1]


def _replace(name: str, value: str | None) -> list[tuple[str, str]]:
    headers = [(key, old) for key, old in BINARY if key != name]
    return headers if value is None else [*headers, (name, value)]


@pytest.mark.parametrize(
    ("headers", "body", "request_", "status"),
    [
        (_replace("ce-type", None), BODY, {}, 400),  # invalid: no type
        (_replace("ce-id", "a,b"), BODY, {}, 400),  # a comma in a single-valued header
        (_replace("traceparent", "junk"), BODY, {}, 400),  # a bad trace header
        (_replace("content-type", "application/cloudevents+json"), BODY, {}, 400),  # structured
        (BINARY, b"x" * 5000, {}, 413),  # over MAX_REQUEST_SIZE
        (BINARY, BODY, {"path": "/publish/"}, 404),
        (BINARY, BODY, {"method": "PUT"}, 405),
        (_replace("ce-specversion", "2.0"), BODY, {}, 400),  # no CloudEvents version we know
    ],
)
def test_what_the_route_is_not_sure_of_goes_to_flask_and_gets_the_same_answer(
    headers: list[tuple[str, str]], body: bytes, request_: dict[str, str], status: int
) -> None:
    fast, flask = _both()
    assert _same(fast, flask, headers, body, **request_)[0] == status
    assert fast.app_calls == flask.app_calls == 1
    assert fast.stored == []


@pytest.mark.parametrize(
    ("authorization", "source", "status", "fast_calls"),
    [
        (None, "orders", 401, 1),
        ("Basic abc", "orders", 401, 1),
        ("Bearer wrong-key", "orders", 401, 1),
        ("Bearer orders-key", "billing", 403, 1),
        ("Bearer orders-key", "orders", 204, 0),
    ],
)
def test_publishers_credentials_are_checked_and_refusals_counted_once(
    tmp_path: Path, authorization: str | None, source: str, status: int, fast_calls: int
) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(KEYS)
    fast, flask = _both({"PROXY_API_KEYS_FILE": str(keys)})
    headers = _replace("ce-source", source)
    if authorization is not None:
        headers.append(("authorization", authorization))
    assert _same(fast, flask, headers, BODY)[0] == status
    assert fast.app_calls == fast_calls
    refused = [line for line in fast.counts() if line.startswith("eventing_epp_publisher_refu")]
    assert [line.rsplit(" ", 1)[1] for line in refused] == (["1.0"] if status != 204 else [])


def test_an_event_jetstream_refuses_gets_the_views_failure_answer_with_retry_after() -> None:
    fast, flask = _both({"PROXY_RETRY_AFTER": "7"})
    fast.fail = flask.fail = Overloaded("JetStream is busy", retry_after=7)
    status, headers, body = _same(fast, flask, BINARY, BODY)
    assert status == 503 and ("Retry-After", "7") in headers
    assert json.loads(body)["title"] == "Event not stored"
    assert fast.app_calls == 0


def test_with_every_slot_taken_the_request_waits_in_flasks_waiting_room() -> None:
    fast = Served(at_once=True, env={"PROXY_THREADS": "1"})
    turns = fast.flask.extensions["eventing.admission"]
    assert turns.try_enter()  # the one slot is taken

    async def late() -> int:
        asyncio.get_running_loop().call_later(0.2, turns.leave)  # frees while the request waits
        scope = FakeScope(FakeHeaders([*BINARY, ("content-length", str(len(BODY)))]))
        protocol = FakeProtocol([BODY])
        await fast.server.__rsgi__(scope, protocol)  # type: ignore[arg-type]
        assert protocol.answer is not None
        return protocol.answer[0]

    assert asyncio.run(late()) == 204
    assert fast.app_calls == 1  # waited for its turn on a thread, as Flask's path does
    assert len(fast.stored) == 1


def test_with_a_jwks_every_publish_goes_to_flask_which_may_fetch_it(tmp_path: Path) -> None:
    issuer = Issuer(tmp_path)
    fast, flask = _both(issuer.environ(tmp_path / "rules.yaml"))
    headers = [*BINARY, ("authorization", f"Bearer {issuer.token()}")]
    assert _same(fast, flask, headers, BODY)[0] == 204
    assert fast.app_calls == 1  # verifying a token may fetch the JWKS: not on the loop
