"""The issue's day-2 journeys through the real ``eventing`` console script, every process real.

Each test runs the tool as a subprocess against one system (proxy, manager and a worker as
subprocesses, nats-server, Redis, loopback sinks) and asserts what it prints, as JSON and in
the human table: an event's attempts while it retries and once delivered, the subscriptions'
delivery figures, a dead letter listed, shown, redriven to its mended sink alone and purged, a
replay, and a tail ended by Ctrl-C. Each test has subscriptions, sources and types of its own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from testing.servers import wait_until
from testing.sink import Sinks, SinkServer
from testing.system import System, script, stop_group, whole_system

pytestmark = pytest.mark.integration

QUICK_RETRIES = {"retry": 5, "backoffPolicy": "linear", "backoffDelay": "PT0.2S", "timeout": "PT5S"}
NO_RETRY = {"retry": 0, "timeout": "PT2S"}  #: one attempt, then a dead letter


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with whole_system(tmp_path_factory.mktemp("journeys")) as running:
        yield running


def _environment(system: System) -> dict[str, str]:
    return {
        **os.environ,
        "EVENTING_PROXY_URL": system.proxy_url,
        "EVENTING_MANAGER_URL": system.manager_url,
        "COLUMNS": "200",
    }


def eventing(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    """The console script, run to its end; it must succeed and say nothing on stderr."""
    result = subprocess.run(
        [script("eventing"), *args],
        env=_environment(system),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"eventing {' '.join(args)}: {result.stderr}\n{system.logs()}"
    assert result.stderr == ""
    return result


def eventing_json(system: System, *args: str) -> Any:
    return json.loads(eventing(system, *args, "--json").stdout)


def _row(table: str, first: str) -> list[str]:
    """The cells of the table's row whose first cell is ``first``."""
    return next(line.split() for line in table.splitlines() if line.split()[:1] == [first])


def _subscribed(system: System, sinks: Sinks, name: str) -> SinkServer:
    """default/``name`` of events of type ``name``.v1 from /shop, to a new sink answering 204."""
    sink = sinks.start()
    spec = {"sink": sink.url, "source": "/shop", "types": [f"{name}.v1"], "delivery": NO_RETRY}
    system.subscribe(name, spec)
    return sink


def _outcomes(system: System, event_id: str) -> dict[str, str]:
    """Where event ``event_id`` from /shop stands at each subscription (``events show``)."""
    document = eventing_json(system, "events", "show", "--source", "/shop", event_id)
    return {name: at["outcome"] for name, at in document["subscriptions"].items()}


def _subscription(system: System, name: str) -> dict[str, Any]:
    document = eventing_json(system, "subscriptions")
    return next(i for i in document["items"] if i["metadata"]["name"] == name)


def test_an_event_retried_then_delivered_shows_every_attempt_and_the_subscription_retrying(
    system: System, sinks: Sinks
) -> None:
    """Journeys 1 and 2: publish, ``events show`` while retrying and once delivered, and
    ``subscriptions`` counting the event in retry, then none."""
    flaky = sinks.start()
    answered = 0
    recovered = threading.Event()

    def answer(request: object) -> int:
        nonlocal answered
        answered += 1
        if answered <= 2:
            return 503
        recovered.wait(10)  # the third attempt waits while the test looks at the retrying event
        return 204

    flaky.sink.answer = answer
    spec = {"sink": flaky.url, "source": "/shop", "types": ["flaky.v1"], "delivery": QUICK_RETRIES}
    system.subscribe("flaky", spec)
    published = eventing(
        system, "publish", "--source", "/shop", "--type", "flaky.v1", "--id", "flaky-1"
    )
    assert published.stdout == "flaky-1\t204 No Content\n"

    def show() -> dict[str, Any]:
        document = eventing_json(system, "events", "show", "--source", "/shop", "flaky-1")
        assert (document["id"], document["source"], document["type"]) == (
            "flaky-1",
            "/shop",
            "flaky.v1",
        )
        return dict(document["subscriptions"]["default/flaky"])

    try:
        wait_until(lambda: len(show()["attempts"]) == 2, 20, f"two attempts\n{system.logs()}")
        retrying = show()
        assert (retrying["outcome"], retrying["reason"]) == ("retrying", "sink answered 503")
        assert [a["status"] for a in retrying["attempts"]] == [503, 503]

        wait_until(
            lambda: _subscription(system, "flaky")["status"]["delivery"]["retrying"] == 1,
            20,
            f"the subscription retrying\n{system.logs()}",
        )
        delivery = _subscription(system, "flaky")["status"]["delivery"]
        assert delivery["lastError"]["status"] == 503 and delivery["deadLettered"] == 0
        assert isinstance(delivery["pending"], int)
        row = _row(eventing(system, "subscriptions").stdout, "default/flaky")
        assert (row[1], row[2].isdigit(), row[3]) == ("yes", True, "1")  # pending, a count
        assert "503" in row[5:]
    finally:
        recovered.set()

    wait_until(lambda: show()["outcome"] == "delivered", 20, f"the delivery\n{system.logs()}")
    delivered = show()
    assert [(a["number"], a["status"]) for a in delivered["attempts"]] == [
        (1, 503),
        (2, 503),
        (3, 204),
    ]
    assert all(a["kind"] == "answered" for a in delivered["attempts"])
    human = eventing(system, "events", "show", "--source", "/shop", "flaky-1").stdout
    assert "event flaky-1 from /shop, type flaky.v1" in human
    assert "default/flaky: delivered" in human
    assert [_row(human, str(n))[3] for n in (1, 2, 3)] == ["503", "503", "204"]
    wait_until(
        lambda: _subscription(system, "flaky")["status"]["delivery"]["retrying"] == 0,
        20,
        "no event in retry any more",
    )


def test_a_dead_letter_is_listed_shown_redriven_to_its_mended_sink_alone_and_purged(
    system: System, sinks: Sinks
) -> None:
    """Journeys 2 and 3: ``subscriptions`` shows the dead letter; ``dlq list``, ``show``,
    ``redrive`` once the sink is mended (another subscription of the type gets nothing twice),
    ``purge``."""
    broken = sinks.start(500, b"database down")
    audit = sinks.start()
    spec = {"sink": broken.url, "source": "/shop", "types": ["order.v1"], "delivery": NO_RETRY}
    system.subscribe("orders", spec)
    system.subscribe("audit", {"sink": audit.url, "source": "/shop", "types": ["order.v1"]})
    eventing(
        system, "publish", "--source", "/shop", "--type", "order.v1", "--id", "o-1",
        "--data", '{"total": 3}',
    )  # fmt: skip

    def letters() -> list[dict[str, Any]]:
        document = eventing_json(system, "dlq", "list", "--subscription", "default/orders")
        assert document["next"] is None
        return list(document["items"])

    wait_until(lambda: len(letters()) == 1, 20, f"a dead letter\n{system.logs()}")
    [item] = letters()
    assert (item["subscription"], item["source"], item["id"]) == ("default/orders", "/shop", "o-1")
    assert (item["status"], item["attempts"], item["sink"]) == (500, 1, broken.url)
    table = eventing(system, "dlq", "list", "--subscription", "default/orders").stdout
    assert table.startswith("SEQUENCE")
    assert _row(table, str(item["sequence"]))[2:7] == [
        "default/orders",
        "/shop",
        "o-1",
        "order.v1",
        "500",
    ]

    shown = eventing_json(system, "dlq", "show", str(item["sequence"]))
    assert "500" in shown["reason"] and shown["status"] == 500
    assert shown["event"]["id"] == "o-1"
    assert [(a["status"], a["answer"]) for a in shown["attempts"]] == [(500, "database down")]
    human = eventing(system, "dlq", "show", str(item["sequence"])).stdout
    assert "database down" in human and '"id": "o-1"' in human

    wait_until(
        lambda: _subscription(system, "orders")["status"]["delivery"]["deadLettered"] == 1,
        20,
        f"the dead letter counted\n{system.logs()}",
    )
    delivery = _subscription(system, "orders")["status"]["delivery"]
    assert delivery["lastError"]["status"] == 500
    row = _row(eventing(system, "subscriptions").stdout, "default/orders")
    assert row[4] == "1" and "500" in row[5:]

    for reason, found in (("ANSWERED 500", 1), ("timeout", 0)):
        query = ("--subscription", "default/orders", "--reason", reason, "--since", "10m")
        assert len(eventing_json(system, "dlq", "list", *query)["items"]) == found
    outcomes = _outcomes(system, "o-1")
    assert outcomes == {"default/orders": "dead-lettered", "default/audit": "delivered"}

    mended = sinks.start()
    system.subscribe("orders", {**spec, "sink": mended.url})
    redriven = eventing_json(system, "dlq", "redrive", "--subscription", "default/orders")
    assert (redriven["state"], redriven["total"], redriven["done"]) == ("done", 1, 1)
    assert (redriven["kind"], redriven["subscription"]) == ("redrive", "default/orders")
    wait_until(lambda: mended.sink.ids() == ["o-1"], 15, f"the redrive\n{system.logs()}")
    wait_until(lambda: not letters(), 10, "the redriven dead letter gone")
    assert audit.sink.ids() == ["o-1"] and broken.sink.ids(None) == ["o-1"]
    both = {"default/orders": "delivered", "default/audit": "delivered"}
    wait_until(lambda: _outcomes(system, "o-1") == both, 10, "the redrive in the ledger")

    system.subscribe("orders", spec)  # broken again: one more dead letter, to purge
    eventing(system, "publish", "--source", "/shop", "--type", "order.v1", "--id", "o-2")
    wait_until(lambda: len(letters()) == 1, 20, f"a second dead letter\n{system.logs()}")
    purged = eventing_json(system, "dlq", "purge", "--before", "0s", "--yes")
    assert purged == {"purged": 1}
    assert letters() == []
    purge = ("dlq", "purge", "--subscription", "default/orders", "--yes")
    assert eventing(system, *purge).stdout == "purged 0 dead letters\n"
    assert "SEQUENCE" in eventing(system, "dlq", "list").stdout
    wait_until(lambda: audit.sink.ids() == ["o-1", "o-2"], 10, "the audit of o-2")
    assert mended.sink.ids() == ["o-1"]


def test_a_replay_delivers_the_subscriptions_events_again(system: System, sinks: Sinks) -> None:
    """Journey 4: ``eventing replay default/NAME --since 10m`` waits for the operation."""
    sink = _subscribed(system, sinks, "replayed")
    for event_id in ("r-1", "r-2"):
        eventing(system, "publish", "--source", "/shop", "--type", "replayed.v1", "--id", event_id)
    wait_until(lambda: sorted(sink.sink.ids()) == ["r-1", "r-2"], 20, f"{system.logs()}")

    operation = eventing_json(system, "replay", "default/replayed", "--since", "10m")
    assert (operation["state"], operation["total"], operation["done"]) == ("done", 2, 2)
    assert (operation["kind"], operation["subscription"]) == ("replay", "default/replayed")
    # Times as THE API shows every time: RFC 3339 UTC.
    assert all(operation[t].endswith("Z") for t in ("started", "ended"))
    wait_until(lambda: len(sink.sink.ids()) == 4, 20, f"the replay\n{system.logs()}")
    assert sorted(sink.sink.ids()[2:]) == ["r-1", "r-2"]
    summary = eventing(system, "replay", "default/replayed", "--since", "10m").stdout
    # The manager's detail follows the tool's summary as one sentence.
    expected = r"replay-\d+ done: 2 of 2 events handed over; replayed 2 event\(s\), up to archive"
    assert re.fullmatch(expected + r" sequence \d+\n", summary), summary
    wait_until(lambda: len(sink.sink.ids()) == 6, 20, f"the second replay\n{system.logs()}")


class Background:
    """The console script running until the test interrupts it, its output lines gathered."""

    def __init__(self, system: System, *args: str) -> None:
        self.process = subprocess.Popen(
            [script("eventing"), *args],
            env=_environment(system),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        self.lines.extend(self.process.stdout or [])

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C (SIGINT to its process group, as a terminal sends): its exit code and
        stderr."""
        os.killpg(self.process.pid, signal.SIGINT)
        code = self.process.wait(10)
        return code, self.process.stderr.read() if self.process.stderr else ""

    def stop(self) -> None:
        stop_group(self.process)


def test_a_tail_prints_deliveries_and_ends_quietly_on_ctrl_c(system: System, sinks: Sinks) -> None:
    """Journey 5: ``eventing tail default/NAME`` in the background, then SIGINT; and
    ``--since`` shows what came before it started."""
    sink = _subscribed(system, sinks, "tailed")
    tail = Background(system, "tail", "default/tailed")
    published: list[str] = []
    try:

        def seen() -> bool:
            """A delivery in the tail; one more event each look, as the tail reads from the
            moment its stream opened, which nothing outside tells."""
            if any("delivered" in line for line in list(tail.lines)):
                return True
            published.append(f"t-{len(published) + 1}")
            assert system.publish_binary(published[-1], "/shop", "tailed.v1").status_code == 204
            return False

        wait_until(seen, 20, f"a delivery in the tail\n{system.logs()}", interval=0.5)
        line = next(line for line in list(tail.lines) if "delivered" in line).split()
        assert line[1:5] == ["delivered", line[2], "/shop", "#1"] and line[2] in published
        assert line[5] == "204" and line[2] in sink.sink.ids()
        assert tail.interrupt() == (0, "")
    finally:
        tail.stop()

    wait_until(lambda: sorted(sink.sink.ids()) == sorted(published), 10, "every delivery")
    earlier = Background(system, "tail", "default/tailed", "--since", "10m", "--json")
    try:

        def delivered() -> list[str]:
            records = [json.loads(line) for line in list(earlier.lines)]
            return sorted(r["id"] for r in records if r["outcome"] == "delivered")

        wait_until(
            lambda: delivered() == sorted(published), 20, f"the earlier deliveries\n{system.logs()}"
        )
        assert earlier.interrupt() == (0, "")
    finally:
        earlier.stop()
