"""Dead letters with every process real: listed, shown, redriven, purged, and sent to a
subscription's dead-letter sink with Knative's attributes.

One system serves the module; each test has subscriptions, sources and types of its own.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from typing import Any

import nats
import pytest
import requests
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

from eventing.delivery import ledger
from eventing.delivery.ledger import Record
from testing.servers import free_port, wait_until
from testing.sink import Sinks
from testing.system import System, whole_system

pytestmark = pytest.mark.integration

FAST = {"retry": 0, "timeout": "PT2S"}  #: one attempt, then a dead letter


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with whole_system(tmp_path_factory.mktemp("deadletters")) as running:
        yield running


def _api(system: System, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"{system.manager_url}{path}", timeout=10, **kwargs)


def _letters(system: System, subscription: str) -> list[dict[str, Any]]:
    answer = _api(system, "GET", "/deadletters", params={"subscription": subscription})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["items"])


def _one_letter(system: System, subscription: str) -> dict[str, Any]:
    wait_until(
        lambda: len(_letters(system, subscription)) == 1,
        20,
        f"a dead letter of {subscription}\n{system.logs()}",
    )
    return _letters(system, subscription)[0]


def _finished(system: System, answer: requests.Response) -> dict[str, Any]:
    """The operation a 202 started, once it ended."""
    assert answer.status_code == 202, answer.text
    path = f"/operations/{answer.json()['operation']['id']}"
    wait_until(
        lambda: _api(system, "GET", path).json()["state"] != "running",
        20,
        f"operation {path}\n{system.logs()}",
    )
    return dict(_api(system, "GET", path).json())


def _ledger(system: System, subject: str) -> list[Record]:
    """The ledger's records on ``subject``."""

    async def read() -> list[Record]:
        client = await nats.connect(system.nats_url)
        try:
            js = client.jetstream()
            found = []
            info = await js.stream_info("sap-ledger")
            for sequence in range(info.state.first_seq, info.state.last_seq + 1):
                message = await js.get_msg("sap-ledger", sequence)
                if message.subject == subject:
                    found.append(Record.from_bytes(message.data or b""))
            return found
        finally:
            await client.close()

    return asyncio.run(read())


def test_a_dead_letter_is_listed_shown_redriven_to_one_subscription_and_purged(
    system: System, sinks: Sinks
) -> None:
    broken = sinks.start(500, b"database down")
    audit = sinks.start()
    event_type = "order.created.v1"
    orders = {"sink": broken.url, "source": "shop", "types": [event_type], "delivery": FAST}
    system.subscribe("orders", orders)
    system.subscribe("audit", {"sink": audit.url, "source": "shop", "types": [event_type]})
    published = time.monotonic()
    assert system.publish_binary("e1", "shop", event_type, b'{"total": 3}').status_code == 204

    item = _one_letter(system, "default/orders")
    assert (item["subscription"], item["source"], item["id"]) == ("default/orders", "shop", "e1")
    assert (item["status"], item["attempts"], item["type"]) == (500, 1, event_type)
    assert "500" in item["reason"] and item["sink"] == broken.url
    wait_until(lambda: audit.sink.ids() == ["e1"], 10, "the audit delivery")

    shown = _api(system, "GET", f"/deadletters/{item['sequence']}").json()
    event = shown["event"]  # as stored: binary-mode bytes in data_base64
    assert event["id"] == "e1" and base64.b64decode(event["data_base64"]) == b'{"total": 3}'
    assert shown["answer"] == "database down" and shown["status"] == 500
    # The worker's own ledger record of its one attempt.
    assert [(a["status"], a["answer"]) for a in shown["attempts"]] == [(500, "database down")]

    # The sink is mended; within the duplicate window of the publish (2 min) the redrive still
    # delivers, to this subscription alone.
    broken.sink.answer = lambda request: 204
    operation = _finished(
        system,
        _api(system, "POST", "/deadletters/redrive", json={"subscription": "default/orders"}),
    )
    assert (operation["state"], operation["total"], operation["done"]) == ("done", 1, 1)
    wait_until(lambda: broken.sink.ids() == ["e1"], 15, f"the redrive\n{system.logs()}")
    assert time.monotonic() - published < 120
    wait_until(lambda: not _letters(system, "default/orders"), 10, "the redriven letter gone")
    time.sleep(1)  # what a fan-out would have sent has arrived by now
    assert audit.sink.ids() == ["e1"]

    records = _ledger(system, ledger.subject("shop", "e1", "default/orders"))
    # The manager's hand-over, then the worker's delivery.
    assert [r.outcome for r in records if r.origin == "redrive"] == ["redriven", "delivered"]

    broken.sink.answer = lambda request: 500
    for event_id in ("e2", "e3"):
        assert system.publish_binary(event_id, "shop", event_type).status_code == 204
    wait_until(lambda: len(_letters(system, "default/orders")) == 2, 20, "two dead letters")
    page = _api(system, "GET", "/deadletters?subscription=default/orders&limit=1").json()
    [first] = page["items"]
    assert page["next"] == first["sequence"]
    rest = _api(system, "GET", f"/deadletters?subscription=default/orders&after={page['next']}")
    [second] = rest.json()["items"]
    assert rest.json()["next"] is None and second["sequence"] > first["sequence"]  # oldest first
    assert {first["id"], second["id"]} == {"e2", "e3"}
    for reason, found in (("ANSWERED 500", 2), ("timeout", 0)):
        query = {"subscription": "default/orders", "reason": reason}
        assert len(_api(system, "GET", "/deadletters", params=query).json()["items"]) == found

    purge = _api(system, "POST", "/deadletters/purge", json={"before": "2000-01-01T00:00:00Z"})
    assert purge.json() == {"purged": 0}
    purge = _api(system, "POST", "/deadletters/purge", json={"sequences": [page["next"]]})
    assert purge.json() == {"purged": 1}
    purge = _api(system, "POST", "/deadletters/purge", json={"subscription": "default/orders"})
    assert purge.json() == {"purged": 1}
    assert _letters(system, "default/orders") == []


def test_a_redrive_goes_to_the_current_sink_and_one_that_fails_again_is_replaced(
    system: System, sinks: Sinks
) -> None:
    wrong = f"http://127.0.0.1:{free_port()}/nobody"
    spec = {"sink": wrong, "source": "billing", "types": ["invoice.sent.v1"], "delivery": FAST}
    system.subscribe("invoices", spec)
    assert system.publish_binary("i1", "billing", "invoice.sent.v1").status_code == 204
    first = _one_letter(system, "default/invoices")
    assert first["sink"] == wrong and first["status"] is None

    # Redriven while the sink is still wrong: the letter is replaced, not duplicated nor lost.
    redrive = {"sequences": [first["sequence"]]}
    _finished(system, _api(system, "POST", "/deadletters/redrive", json=redrive))
    wait_until(
        lambda: [i["redrives"] for i in _letters(system, "default/invoices")] == [1],
        20,
        f"the replaced letter\n{system.logs()}",
    )
    [second] = _letters(system, "default/invoices")
    assert second["sequence"] > first["sequence"] and second["id"] == "i1"

    fixed = sinks.start()
    system.subscribe("invoices", {**spec, "sink": fixed.url})
    redrive = {"sequences": [second["sequence"]]}
    _finished(system, _api(system, "POST", "/deadletters/redrive", json=redrive))
    wait_until(lambda: fixed.sink.ids() == ["i1"], 15, f"the redrive\n{system.logs()}")
    wait_until(lambda: not _letters(system, "default/invoices"), 10, "the letter gone")


def test_a_dead_letter_sink_receives_knatives_attributes(system: System, sinks: Sinks) -> None:
    failing = sinks.start(503, b"try later")
    dead_letter_sink = sinks.start()
    delivery = {**FAST, "deadLetterSink": dead_letter_sink.url}
    spec = {
        "sink": failing.url,
        "source": "pay",
        "types": ["payment.failed.v1"],
        "delivery": delivery,
    }
    system.subscribe("payments", spec)
    assert system.publish_binary("p1", "pay", "payment.failed.v1", b'{"n": 7}').status_code == 204

    wait_until(lambda: dead_letter_sink.sink.ids() == ["p1"], 20, f"the DLS\n{system.logs()}")
    [delivery_] = dead_letter_sink.sink.received()
    event = from_http_event(HTTPMessage(delivery_.headers, delivery_.body))
    assert (event.get_id(), event.get_source()) == ("p1", "pay")
    assert event.get_type() == "payment.failed.v1"
    assert event.get_extension("knativeerrorcode") == "503"
    assert event.get_extension("knativeerrordest") == failing.url
    assert base64.b64decode(event.get_extension("knativeerrordata")) == b"try later"
    assert event.get_data() == {"n": 7}
    assert _one_letter(system, "default/payments")["id"] == "p1"  # the copy stays
    assert _dead_letter_consumers(system) == ["dead-letter-sink"]

    system.subscribe("payments", {**spec, "delivery": FAST})  # the field removed: its consumer too
    wait_until(lambda: _dead_letter_consumers(system) == [], 20, "the DLS consumer gone")
    assert system.publish_binary("p2", "pay", "payment.failed.v1").status_code == 204
    wait_until(lambda: len(_letters(system, "default/payments")) == 2, 20, "a second letter")
    assert dead_letter_sink.sink.ids() == ["p1"]


def _dead_letter_consumers(system: System) -> list[str]:
    """What the durable consumers on the dead-letter stream are for (their name's tail)."""

    async def names() -> list[str]:
        client = await nats.connect(system.nats_url)
        try:
            infos = await client.jetstream().consumers_info("sap-dlq")
            return sorted(i.name.partition("-")[2] for i in infos if i.config.durable_name)
        finally:
            await client.close()

    return asyncio.run(names())


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "named"),
    [
        ("GET", "/deadletters?limit=0", None, 400, "limit"),
        ("GET", "/deadletters?limit=ten", None, 400, "limit"),
        ("GET", "/deadletters?limit=1001", None, 400, "limit"),
        ("GET", "/deadletters?after=-1", None, 400, "after"),
        ("GET", "/deadletters?since=yesterday", None, 400, "since"),
        ("GET", "/deadletters?subscription=nobody", None, 400, "subscription"),
        ("GET", "/deadletters?subscription=default/nobody", None, 404, "default/nobody"),
        ("GET", "/deadletters/first", None, 400, "sequence"),
        ("GET", "/deadletters/999999", None, 404, "no dead letter 999999"),
        ("POST", "/deadletters/purge", {}, 400, "subscription"),
        ("POST", "/deadletters/purge", {"before": "soon"}, 400, "before"),
        ("POST", "/deadletters/purge", {"sequences": [999999]}, 404, "no dead letter(s) [999999]"),
        ("POST", "/deadletters/redrive", {"sequences": "all"}, 400, "sequences"),
        ("POST", "/deadletters/redrive", {"sequences": [999999]}, 404, "no dead letter 999999"),
        ("POST", "/deadletters/redrive", {"subscription": "a/b", "since": "x"}, 400, "since"),
    ],
)
def test_bad_input_answers_a_problem_naming_it(
    system: System, method: str, path: str, body: Any, status: int, named: str
) -> None:
    answer = _api(system, method, path, json=body)
    assert answer.status_code == status, answer.text
    problem = answer.json()
    assert problem["status"] == status and named in problem["detail"]
