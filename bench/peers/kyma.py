"""Kyma's side of the peer suite: its publisher proxy and, if given, its eventing-manager (the
JetStream dispatcher), unmodified, from binaries the user built.

What they need to run outside a cluster (read from their cmd/ and config/, see
docs/performance.md "Issue 16: peers"):

- A Kubernetes API, always: the proxy syncs an informer on ``eventing.kyma-project.io/v1alpha2``
  Subscriptions at start (or exits), the manager reconciles an Eventing CR and lists NATS CRs.
  :class:`testing.kube.ControlPlane` (etcd + kube-apiserver, as our tests run them) serves them,
  with Kyma's own CRDs (:func:`crd_files`).
- Objects: the ``kyma-system`` namespace, an empty NATS CR ``kyma-system/eventing`` (only its
  name is read: it makes the dispatcher's URL), an Eventing CR (NATS backend, the prefix
  ``sap.kyma.custom`` of Kyma installs) and a Service for the sink, which the Subscription
  validator requires. The manager also creates the proxy's Deployment: an object only, as no
  kubelet runs, so the proxy is started here by hand.
- nats-server on port 4222 (hard-coded by the manager; this namespace's loopback). The manager
  creates the stream ``sap`` on ``kyma.>``; without a manager this module creates it with the
  manager's settings (:func:`kyma_stream`), since the proxy never does (it answers 504 until then).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from testing.kube import ControlPlane, Kube, documents, kubebins
from testing.servers import NatsServer, answers_ok, free_port, nats_server_binary, wait_until
from testing.system import Process

NATS_PORT = 4222
STREAM = "sap"
EVENT_TYPE_PREFIX = "sap.kyma.custom"
#: The Go modules whose config/crd/bases hold the CRDs the services read.
CRD_MODULES = ("github.com/kyma-project/eventing-manager", "github.com/kyma-project/nats-manager")
#: The manager's environment, from config/manager/manager.yaml (its NATS_URL is not read).
MANAGER_ENVIRON = {
    "NAMESPACE": "kyma-system",
    "EVENTING_CR_NAME": "eventing",
    "EVENTING_CR_NAMESPACE": "kyma-system",
    "NATS_URL": "eventing-nats.kyma-system.svc.cluster.local",
    "PUBLISHER_REQUEST_TIMEOUT": "10s",
    "DEFAULT_MAX_IN_FLIGHT_MESSAGES": "10",
    "DEFAULT_DISPATCHER_RETRY_PERIOD": "5m",
    "DEFAULT_DISPATCHER_MAX_RETRIES": "10",
    "APP_LOG_FORMAT": "json",
    "APP_LOG_LEVEL": "info",
    "JS_STREAM_NAME": STREAM,
    "JS_STREAM_SUBJECT_PREFIX": "kyma",
    "JS_STREAM_STORAGE_TYPE": "file",
    "JS_STREAM_REPLICAS": "1",
    "JS_STREAM_DISCARD_POLICY": "new",
    "JS_STREAM_RETENTION_POLICY": "interest",
    "JS_CONSUMER_DELIVER_POLICY": "new",
    "JS_STREAM_MAX_MSGS": "-1",
    "JS_STREAM_MAX_BYTES": "700Mi",
    "EVENTING_WEBHOOK_AUTH_SECRET_NAME": "eventing-webhook-auth",
    "EVENTING_WEBHOOK_AUTH_SECRET_NAMESPACE": "kyma-system",
}


def crd_folders(binaries: list[Path]) -> list[Path]:
    """config/crd/bases of the :data:`CRD_MODULES` versions the ``binaries`` were built with (Go
    build info), in the Go module cache where building them put those modules."""
    versions: dict[str, str] = {}
    for binary in binaries:
        versions.update(_dependencies(binary))
    missing = [module for module in CRD_MODULES if module not in versions]
    if missing:
        raise SystemExit(f"{binaries[0]} names no version of {', '.join(missing)}: --kyma-crds")
    return [_module_folder(module, versions[module]) / "config/crd/bases" for module in CRD_MODULES]


def crd_files(folders: list[Path]) -> list[Path]:
    """The CRD files to install: every YAML file in ``folders``."""
    files = sorted(path for folder in folders for path in folder.glob("*.yaml"))
    if not files:
        raise SystemExit(f"no CRD files in {', '.join(map(str, folders))}")
    return files


def _dependencies(binary: Path) -> dict[str, str]:
    """Module path → version of the dependencies ``go version -m`` lists for ``binary``."""
    listing = subprocess.run(
        ["go", "version", "-m", str(binary)], capture_output=True, text=True, check=True
    ).stdout
    fields = (line.split("\t") for line in listing.splitlines())
    return {f[2]: f[3] for f in fields if len(f) > 3 and f[1] == "dep"}


def _module_folder(module: str, version: str) -> Path:
    """Where the Go module cache holds ``module@version`` (its build put it there)."""
    cache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True
    ).stdout.strip()
    escaped = re.sub("[A-Z]", lambda upper: "!" + upper.group().lower(), module)
    folder = Path(cache) / f"{escaped}@{version}"
    if not folder.is_dir():
        raise SystemExit(f"{module}@{version} is not in {cache}: give --kyma-crds FOLDER")
    return folder


def objects(sink_port: int) -> list[dict[str, Any]]:
    """What the manager reads besides Subscriptions (see the module docstring)."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kyma-system"}},
        {
            "apiVersion": "operator.kyma-project.io/v1alpha1",
            "kind": "NATS",
            "metadata": {"name": "eventing", "namespace": "kyma-system"},
            "spec": {},
        },
        {
            "apiVersion": "operator.kyma-project.io/v1alpha1",
            "kind": "Eventing",
            "metadata": {"name": "eventing", "namespace": "kyma-system"},
            "spec": {
                "backend": {
                    "type": "NATS",
                    "config": {
                        "eventTypePrefix": EVENT_TYPE_PREFIX,
                        "natsStreamStorageType": "File",
                        "natsStreamReplicas": 1,
                        "natsStreamMaxSize": "700M",
                        "natsMaxMsgsPerTopic": 1000000,
                    },
                },
                "publisher": {"replicas": {"min": 1, "max": 1}},
                "logging": {"logLevel": "Info"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "sink", "namespace": "default"},
            "spec": {"ports": [{"port": sink_port, "targetPort": sink_port}]},
        },
    ]


def subscription(sink_url: str, source: str, event_type: str) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.kyma-project.io/v1alpha2",
        "kind": "Subscription",
        "metadata": {"name": "perf", "namespace": "default"},
        "spec": {
            "sink": sink_url,
            "typeMatching": "standard",
            "source": source,
            "types": [event_type],
            "config": {"maxInFlightMessages": "100"},
        },
    }


def kyma_stream() -> StreamConfig:
    """The stream the manager creates with :data:`MANAGER_ENVIRON` and the Eventing CR."""
    return StreamConfig(
        name=STREAM,
        subjects=["kyma.>"],
        retention=RetentionPolicy.INTEREST,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_bytes=700 * 2**20,
        max_msgs_per_subject=1000000,
        num_replicas=1,
    )


class Kyma:
    """Kyma's services and what they need, started in ``workdir`` and stopped in reverse."""

    def __init__(
        self, epp: Path, manager: Path | None, crds: list[Path], workdir: Path, sink_port: int
    ) -> None:
        binary = nats_server_binary()
        if binary is None:
            raise SystemExit("the peer suite needs nats-server")
        self.workdir = workdir
        self.sink_port = sink_port
        self._crds = crds
        (workdir / "kube").mkdir(parents=True)
        (workdir / "nats").mkdir()
        self.plane = ControlPlane(kubebins(), workdir / "kube")
        self.nats = NatsServer(binary, workdir / "nats")
        self.nats.port = NATS_PORT  # the manager's hard-coded port
        self.proxy_port = free_port()
        base = {**os.environ, "KUBECONFIG": str(self.plane.kubeconfig)}
        health = free_port()
        self.manager = (
            Process(
                "kyma-manager",
                [
                    str(manager),
                    f"--metrics-addr=127.0.0.1:{free_port()}",
                    f"--health-probe-bind-addr=127.0.0.1:{health}",
                ],
                {**base, **MANAGER_ENVIRON},
                workdir,
            )
            if manager
            else None
        )
        self._manager_ready = f"http://127.0.0.1:{health}/readyz"
        self.proxy = Process(
            "kyma-proxy",
            [
                str(epp),
                f"--metrics-addr=127.0.0.1:{free_port()}",
                f"--kubeconfig={self.plane.kubeconfig}",
            ],
            {
                **base,
                "BACKEND": "nats",
                "NATS_URL": self.nats.url,
                "INGRESS_PORT": str(self.proxy_port),  # read by the code; PORT is not
                "REQUEST_TIMEOUT": "5s",
                "LEGACY_NAMESPACE": "kyma",
                "EVENT_TYPE_PREFIX": EVENT_TYPE_PREFIX,
                "JS_STREAM_NAME": STREAM,
                "APPLICATION_CRD_ENABLED": "false",  # no Application CRD here
                "APP_LOG_FORMAT": "json",
                "APP_LOG_LEVEL": "info",
            },
            workdir,
        )
        self.kube: Kube | None = None

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def start(self) -> None:
        self.plane.start()
        self.kube = Kube(self.plane)
        self.kube.apply([doc for path in self._crds for doc in documents(path.read_text())])
        self.kube.apply(objects(self.sink_port))
        self.nats.start()
        if self.manager is None:
            asyncio.run(_add_stream(self.nats.url, kyma_stream()))
        else:
            self.manager.start()
            self.manager.wait_ready(lambda: answers_ok(self._manager_ready), timeout=90)
            wait_until(
                lambda: asyncio.run(_has_stream(self.nats.url)),
                90,
                f"Kyma's manager to create stream {STREAM}\n{self.manager.log()[-3000:]}",
                interval=0.5,
            )
        self.proxy.start()
        self.proxy.wait_ready(lambda: answers_ok(f"{self.proxy_url}/readyz"), timeout=60)

    def roots(self) -> dict[str, int]:
        """The pid of each component's process tree: manager (if any), epp, nats."""
        processes = {
            "manager": self.manager.popen if self.manager else None,
            "epp": self.proxy.popen,
            "nats": self.nats.process,
        }
        return {name: process.pid for name, process in processes.items() if process is not None}

    def subscribe(self, sink_url: str, source: str, event_type: str) -> None:
        """Create the one Subscription and wait until the manager says it is ready."""
        assert self.kube is not None and self.manager is not None
        self.kube.apply(subscription(sink_url, source, event_type))

        def ready() -> bool:
            assert self.kube is not None
            found = self.kube.get(
                "eventing.kyma-project.io/v1alpha2", "Subscription", "perf", "default"
            )
            return bool((found.get("status") or {}).get("ready"))

        wait_until(
            ready, 90, f"Kyma's subscription ready\n{self.manager.log()[-3000:]}", interval=0.5
        )
        time.sleep(1)  # the dispatcher binds its consumer

    def stop(self) -> None:
        self.proxy.stop()
        if self.manager is not None:
            self.manager.stop()
        self.nats.stop()
        if self.kube is not None:
            self.kube.close()
        self.plane.stop()


async def _add_stream(url: str, config: StreamConfig) -> None:
    connection = await nats.connect(url)
    try:
        await connection.jetstream().add_stream(config)
    finally:
        await connection.close()


async def _has_stream(url: str) -> bool:
    connection = await nats.connect(url)
    try:
        await connection.jetstream().stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        return False
    finally:
        await connection.close()
    return True
