"""The manager against a hostile or broken subscription folder, as a real subprocess.

Nothing in the folder may stop it or blind it: bad files are named in the status and the log,
the valid subscriptions beside them keep being served, and changes to other files still apply.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
import requests
import yaml

from eventing.sources.directory import MAX_DEPTH
from eventing.subscriptions.model import MAX_TYPES
from testing.servers import NatsServer, RedisServer, wait_until
from testing.sink import SinkServer
from testing.system import System
from tests.conftest import stop_showing_logs

pytestmark = pytest.mark.integration

API = "eventing.kyma-project.io/v1alpha2"


def manifest(name: str, spec: dict[str, object]) -> str:
    return yaml.safe_dump(
        {"apiVersion": API, "kind": "Subscription", "metadata": {"name": name}, "spec": spec}
    )


def spec_for(sink: SinkServer, event_type: str = "order.created.v1") -> dict[str, object]:
    return {"sink": f"{sink.url}/", "source": "shop", "types": [event_type]}


def overview(system: System) -> dict[str, object]:
    return dict(requests.get(f"{system.manager_url}/subscriptions", timeout=5).json())


def unreadable(system: System) -> dict[str, str]:
    listed = overview(system)["unreadable"]
    assert isinstance(listed, list)
    return {entry["file"]: entry["problem"] for entry in listed}


def consumer_names(nats_url: str, stream: str = "sap") -> set[str]:
    async def names() -> set[str]:
        connection = await nats.connect(nats_url)
        try:
            return {info.name for info in await connection.jetstream().consumers_info(stream)}
        finally:
            await connection.close()

    return asyncio.run(names())


def consumer_of(system: System, name: str) -> str:
    item = system.status("default", name)
    assert item is not None
    [binding] = item["status"]["backend"]["types"]
    return str(binding["consumerName"])


def test_bad_files_neither_stop_nor_blind_the_manager(
    system: System, sink_server: SinkServer, tmp_path: Path
) -> None:
    system.subscribe("good", spec_for(sink_server))
    folder = system.subscriptions
    outside = tmp_path / "secret.txt"
    outside.write_text("password: hunter2\nbroken: [\n")
    (folder / "nested.yaml").write_text("[" * 1000)
    bomb = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    bomb += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    (folder / "bomb.yaml").write_text(
        manifest("bomb", spec_for(sink_server)).replace("spec:", "\n".join(bomb) + "\nspec:")
        + "  typeMatching: *a9\n"
    )
    (folder / "zero.yaml").symlink_to("/dev/zero")
    (folder / "leak.yaml").symlink_to(outside)
    os.mkfifo(folder / "pipe.yaml")
    many = {**spec_for(sink_server), "types": [f"order.n{i}.v1" for i in range(20_000)]}
    (folder / "many.yaml").write_text(manifest("many", many))

    bad = {"nested.yaml", "bomb.yaml", "zero.yaml", "leak.yaml", "pipe.yaml"}
    wait_until(lambda: set(unreadable(system)) == bad, 30, f"bad files listed\n{system.logs()}")
    problems = unreadable(system)
    assert f"nested more than {MAX_DEPTH} levels deep" in problems["nested.yaml"]
    assert "aliases expand to" in problems["bomb.yaml"]
    assert "points outside the folder" in problems["zero.yaml"]
    assert "points outside the folder" in problems["leak.yaml"]
    assert "not a regular file" in problems["pipe.yaml"]
    many_status = system.status("default", "many")
    assert many_status is not None
    assert f"spec.types: at most {MAX_TYPES} types, got 20000" in str(many_status["status"])
    assert "hunter2" not in requests.get(f"{system.manager_url}/subscriptions", timeout=5).text

    # The valid subscription beside them is still served.
    assert system.publish_binary("e1", "shop", "order.created.v1").status_code == 204
    wait_until(lambda: "e1" in sink_server.sink.ids(), 20, f"delivery\n{system.logs()}")

    # Each problem is logged once, naming the file or the subscription, and not again when
    # an unrelated change makes the manager reconcile.
    system.subscribe("other", spec_for(sink_server, "order.deleted.v1"))
    log = system.manager.log()
    for name in sorted(bad):
        assert log.count(f"manifest file {name} is unreadable") == 1, log
    assert log.count("subscription default/many (file many.yaml) is invalid: spec.types") == 1

    # A FIFO in the folder does not keep the manager from answering SIGTERM.
    system.manager.stop(timeout=10)
    assert system.manager.popen is not None and system.manager.popen.returncode == 0
    assert "manager stopped" in system.manager.log()


def test_a_bad_file_does_not_freeze_changes_to_the_others(
    system: System, sink_server: SinkServer
) -> None:
    system.subscribe("keep", spec_for(sink_server))
    system.subscribe("drop", spec_for(sink_server, "order.deleted.v1"))
    kept, dropped = consumer_of(system, "keep"), consumer_of(system, "drop")
    (system.subscriptions / "default-keep.yaml").write_text("kind: [unclosed\n")
    wait_until(lambda: "default-keep.yaml" in unreadable(system), 20, "the broken file listed")
    system.unsubscribe("drop")
    wait_until(
        lambda: dropped not in consumer_names(system.nats_url),
        20,
        f"the consumer of the deleted subscription deleted\n{system.logs()}",
    )
    assert kept in consumer_names(system.nats_url)  # the broken file's consumer stays


@pytest.fixture
def limited_system(
    redis_server: RedisServer,
    nats_server_one_consumer: NatsServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[System]:
    """The system on a nats-server whose account may hold one consumer only."""
    running = System(nats_server_one_consumer, redis_server, tmp_path).start()
    yield running
    stop_showing_logs(request, running)


def test_past_the_consumer_limit_status_says_so_and_attempts_back_off(
    limited_system: System, sink_server: SinkServer
) -> None:
    system = limited_system
    system.subscribe("first", spec_for(sink_server))
    (system.subscriptions / "second.yaml").write_text(
        manifest("second", spec_for(sink_server, "order.deleted.v1"))
    )

    def refused() -> bool:
        item = system.status("default", "second")
        return item is not None and "maximum consumers limit reached" in str(item["status"])

    wait_until(refused, 20, f"the limit in the status\n{system.logs()}")
    item = system.status("default", "second")
    assert item is not None and item["status"]["ready"] is False

    def pauses() -> list[float]:
        found = re.findall(r"retried with back-off, the next in ([\d.]+) s", system.manager.log())
        return [float(p) for p in found]

    wait_until(lambda: len(pauses()) >= 4, 30, f"four attempts\n{system.logs()}")
    assert pauses()[:4] == [1.0, 2.0, 4.0, 8.0]
    assert system.manager.log().count("maximum consumers limit reached") == 1  # once per change

    system.unsubscribe("first")  # frees the slot: the next attempt goes at once
    wait_until(
        lambda: (s := system.status("default", "second")) is not None and s["status"]["ready"],
        20,
        f"second ready once a slot is free\n{system.logs()}",
    )


def test_status_echoes_the_spec_as_written_and_keeps_transition_times(
    system: System, sink_server: SinkServer
) -> None:
    spec = {**spec_for(sink_server), "delivery": {"retry": 3, "backoffDelay": "PT1S"}}
    system.subscribe("echo", spec)
    first = system.status("default", "echo")
    assert first is not None and first["spec"] == spec  # no backoffMax, PT1S not 1.0
    time.sleep(1.1)  # condition times have a resolution of one second
    system.subscribe("other", spec_for(sink_server, "order.deleted.v1"))  # a reconcile
    again = system.status("default", "echo")
    assert again is not None
    assert again["status"]["conditions"] == first["status"]["conditions"]
