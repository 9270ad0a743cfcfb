"""The whole system as ``honcho start`` runs it: the repository's Procfile, a real honcho.

Each run gets its own env file (``honcho start -e``: honcho lets an env file win over the shell,
so the ports are set there), free loopback ports, a data folder that survives a restart, and a
subscription to a slow loopback sink. honcho's output is read line by line and time-stamped on
arrival, so a run can tell when each process stopped after the interrupt and which ones honcho
had to SIGKILL. Shared by tests/integration/test_honcho.py and bench/shutdown.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sysconfig
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import requests
import yaml
from werkzeug.wrappers import Request

from testing.servers import free_port, wait_until
from testing.sink import RecordingSink, SinkServer
from testing.system import script

REPOSITORY = Path(__file__).resolve().parents[1]
EVENT_TYPE = "order.created.v1"
SOURCE = "honcho-run"
_STOPPED = re.compile(r"system\s*\| (\S+)\.\d+ stopped \(rc=(-?\d+)\)")
_KILLED = re.compile(r"system\s*\| sending SIGKILL to (\S+)\.\d+")
_STARTED = re.compile(r"system\s*\| (\S+\.\d+) started \(pid=(\d+)\)")
_ENDED = re.compile(r"system\s*\| (\S+\.\d+) stopped \(rc=-?\d+\)")


@dataclass
class AnsweringSink:
    """A sink that takes ``delay`` seconds per event and records when it answered 2xx."""

    delay: float
    answered: dict[str, list[float]] = field(default_factory=dict)  #: ce-id → monotonic times
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, request: Request) -> int:
        time.sleep(self.delay)
        with self._lock:
            self.answered.setdefault(request.headers.get("ce-id", ""), []).append(time.monotonic())
        return 204

    def answered_before(self, moment: float) -> set[str]:
        """Ids whose first 2xx answer was given before ``moment``."""
        with self._lock:
            return {i for i, times in self.answered.items() if min(times) < moment}

    def count(self, event_id: str) -> int:
        with self._lock:
            return len(self.answered.get(event_id, ()))


@dataclass(frozen=True)
class Stop:
    """How one process of the Procfile ended after the interrupt."""

    name: str
    after: float  #: seconds from the SIGINT to honcho's "stopped" line
    returncode: int
    killed: bool  #: honcho sent it SIGKILL


class HonchoRun:
    """``honcho start`` of the Procfile, started and interrupted as often as needed.

    Parameters:
        workdir: holds the env file, the data folder and the subscription manifests.
        sink_delay: seconds the sink takes per event, so events are in flight when it stops.
        procfile: the repository's by default.
        from_shell: set the ports in honcho's own environment (as ``NATS_PORT=… honcho
            start`` does) instead of an env file, leave ``NATS_URL`` and ``BROKER_URL`` to the
            Procfile, and let honcho read the repository's ``.env``.
        env: extra settings for the env file.
    """

    def __init__(
        self,
        workdir: Path,
        sink_delay: float = 0.3,
        procfile: Path | None = None,
        *,
        from_shell: bool = False,
        **env: str,
    ) -> None:
        self.workdir = workdir
        self.procfile = procfile or REPOSITORY / "Procfile"
        self.sink = AnsweringSink(sink_delay)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self._recording = RecordingSink(answer=self.sink.answer)
        self._sink_server = SinkServer(self._recording).start()
        self.ports = {
            name: free_port()
            for name in (
                "NATS_PORT",
                "NATS_MONITOR_PORT",
                "REDIS_PORT",
                "INGRESS_PORT",
                "MANAGER_PORT",
                "EVENT_DISPLAY_PORT",
                "WORKER_METRICS_PORT",
            )
        }
        subscriptions = workdir / "subscriptions"
        subscriptions.mkdir(parents=True, exist_ok=True)
        (subscriptions / "slow.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "eventing.kyma-project.io/v1alpha2",
                    "kind": "Subscription",
                    "metadata": {"name": "slow", "namespace": "default"},
                    "spec": {
                        "sink": f"http://127.0.0.1:{self._sink_server.port}/",
                        "source": SOURCE,
                        "types": [EVENT_TYPE],
                        "config": {"maxInFlightMessages": "20"},
                        # A short request timeout keeps the consumer's ack wait short (9 s), so
                        # an unacknowledged event comes back soon after a restart.
                        "delivery": {"timeout": "PT2S"},
                    },
                }
            )
        )
        settings = {
            **{name: str(port) for name, port in self.ports.items()},
            "EVENTING_DATA_DIR": str(workdir / "data"),
            "SUBSCRIPTIONS_DIR": str(subscriptions),
            "DELIVERY_ACK_WAIT": "5s",
            **env,
        }
        self._shell = settings if from_shell else {}
        if not from_shell:
            settings["NATS_URL"] = f"nats://127.0.0.1:{self.ports['NATS_PORT']}"
            settings["BROKER_URL"] = f"redis://127.0.0.1:{self.ports['REDIS_PORT']}/0"
            settings["PYTHONUNBUFFERED"] = "1"
        self.env_file = None if from_shell else workdir / "run.env"
        if self.env_file is not None:
            self.env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        self.lines: list[tuple[float, str]] = []
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._run_starts_at = 0  #: index in lines where the current honcho run began
        self.interrupted_at = 0.0
        self.in_flight_at_interrupt = 0  #: requests the sink was answering at the SIGINT
        self.published: list[str] = []
        self._publishing = threading.Event()
        self._publisher: threading.Thread | None = None

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['INGRESS_PORT']}"

    def start(self, timeout: float = 30) -> None:
        """Start honcho and wait until the proxy is ready and the subscription is served."""
        self._run_starts_at = len(self.lines)
        self._process = subprocess.Popen(
            [script("honcho"), "--no-colour", "start", *self._files()],
            cwd=REPOSITORY,
            env={
                **{k: v for k, v in os.environ.items() if k != "PROCFILE"},
                **self._shell,
                # The Procfile's commands are found on PATH, as in an activated venv.
                "PATH": f"{sysconfig.get_path('scripts')}{os.pathsep}{os.environ.get('PATH', '')}",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a terminal's Ctrl-C reaches honcho alone, as here
        )
        self._reader = threading.Thread(target=self._read, args=(self._process,), daemon=True)
        self._reader.start()
        manager = f"http://127.0.0.1:{self.ports['MANAGER_PORT']}/subscriptions/default/slow"
        wait_until(lambda: _ok(f"{self.proxy_url}/readyz"), timeout, f"the proxy\n{self.output()}")
        wait_until(lambda: _ready(manager), timeout, f"the subscription served\n{self.output()}")
        wait_until(
            lambda: "ready for action" in self.output(), timeout, f"the worker\n{self.output()}"
        )

    def _files(self) -> list[str]:
        env_file = [] if self.env_file is None else ["-e", str(self.env_file)]
        return ["-f", str(self.procfile), *env_file]

    def publish_steadily(self, rate: float) -> None:
        """Publish ``rate`` events per second in the background until :meth:`interrupt`."""
        self._publishing.set()
        self._publisher = threading.Thread(target=self._publish, args=(rate,), daemon=True)
        self._publisher.start()

    def interrupt(self, timeout: float = 15) -> list[Stop]:
        """Ctrl-C: SIGINT to honcho, then wait for it to exit; how each process stopped.

        Raises:
            AssertionError: honcho did not exit within ``timeout`` seconds.
        """
        assert self._process is not None
        self._publishing.clear()
        if self._publisher is not None:
            self._publisher.join(5)
        self.interrupted_at = time.monotonic()
        self.in_flight_at_interrupt = self._recording.in_flight
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            raise AssertionError(f"honcho did not exit\n{self.output()}") from None
        if self._reader is not None:
            self._reader.join(5)
        return self.stops()

    def stops(self) -> list[Stop]:
        killed = {m[1] for _, line in self.lines if (m := _KILLED.search(line))}
        return [
            Stop(m[1], at - self.interrupted_at, int(m[2]), m[1] in killed)
            for at, line in self.lines
            if at >= self.interrupted_at and (m := _STOPPED.search(line))
        ]

    def stored_events(self) -> int:
        """Events the stream still holds: with interest retention, those not acknowledged."""
        url = f"http://127.0.0.1:{self.ports['NATS_MONITOR_PORT']}/jsz?streams=true"
        with urllib.request.urlopen(url, timeout=2) as answer:
            document = json.load(answer)
        return sum(
            stream["state"]["messages"]
            for account in document.get("account_details", [])
            for stream in account.get("stream_detail", [])
            if stream["name"] == "sap"
        )

    def wait_settled(self, timeout: float) -> None:
        """Wait until the sink has every published event and the stream is empty (interest
        retention: every event acknowledged). An ack lost in a shutdown keeps its event in the
        stream until the ack wait (9 s) sends it to the sink again."""
        wait_until(
            lambda: set(self.published) <= set(self.sink.answered) and self.stored_events() == 0,
            timeout,
            f"every event settled\n{self.output()}",
        )

    def output(self) -> str:
        return "".join(line for _, line in self.lines)

    def close(self) -> None:
        """Stop a run still going as Ctrl-C does, and kill whatever outlives that."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(15)
        self._kill()
        self._sink_server.stop()

    def _kill(self) -> None:
        """SIGKILL honcho and every process of its current run that has not stopped. honcho
        starts each process in a session of its own, so killing honcho's group alone left a
        whole system running after every test (eventing-dependency's servers die with it)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        running: dict[str, int] = {}
        for _, line in self.lines[self._run_starts_at :]:
            if started := _STARTED.search(line):
                running[started[1]] = int(started[2])
            elif ended := _ENDED.search(line):
                running.pop(ended[1], None)
        for pid in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append((time.monotonic(), line))

    def _publish(self, rate: float) -> None:
        session = requests.Session()
        while self._publishing.is_set():
            event_id = f"e{len(self.published)}-{time.monotonic_ns()}"
            headers = {
                "ce-specversion": "1.0",
                "ce-id": event_id,
                "ce-source": SOURCE,
                "ce-type": quote(EVENT_TYPE),
                "content-type": "application/json",
            }
            try:
                response = session.post(
                    f"{self.proxy_url}/publish", headers=headers, data=b"{}", timeout=5
                )
            except requests.RequestException:
                continue
            if response.ok:
                self.published.append(event_id)
            time.sleep(1 / rate)


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _ready(url: str) -> bool:
    try:
        response = requests.get(url, timeout=1)
    except requests.RequestException:
        return False
    return response.status_code == 200 and bool(response.json()["status"]["ready"])
