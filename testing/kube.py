"""A real Kubernetes API server for tests, and a small client for it.

:class:`ControlPlane` does what controller-runtime's envtest does: etcd on free loopback ports
with a throw-away data folder, fresh certificates (:mod:`testing.pki`), then kube-apiserver with
envtest's flags, a wait for ``/readyz`` and a kubeconfig file. Nothing else runs: no controller
manager, so namespaces never finish terminating, nothing is garbage-collected and no pod is ever
scheduled. Tests therefore work in a namespace of their own and check what the API server accepts
and stores, not what a cluster would do with it.

:class:`Kube` talks to it with ``requests`` and the admin certificate: server-side apply, a
server-side dry run of the same, and plain creation, so a test can submit any manifest without
knowing its resource's URL.

Why one module over 400 lines: the control plane and its client go together (every Kubernetes
test starts the one and talks through the other, with the plane's admin certificate); the
certificates themselves are :mod:`testing.pki`'s.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from testing import pki
from testing.servers import free_port, require_binary, wait_until
from testing.system import stop_group

_ROOT = Path(__file__).resolve().parents[1]
_BINARIES = ("etcd", "kube-apiserver")
_START_TIMEOUT = 90.0  # two cold Go servers on a busy 2-core machine
_FIELD_MANAGER = "eventing-tests"

Manifests = Mapping[str, Any] | str | Iterable[Mapping[str, Any]]


def kubebins() -> Path:
    """The folder holding ``etcd`` and ``kube-apiserver``, or skip (locally) / fail (with CI).

    ``EVENTING_KUBEBINS`` names the folder; otherwise ``scripts/build-kubebins.sh`` prints it,
    building both binaries with Go first when they are missing (about five minutes).
    """
    named = os.environ.get("EVENTING_KUBEBINS")
    if named and all((Path(named) / name).exists() for name in _BINARIES):
        return Path(named)
    script = _ROOT / "scripts" / "build-kubebins.sh"
    result = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    folder = Path(lines[-1]) if result.returncode == 0 and lines else None
    reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
    hint = f"set EVENTING_KUBEBINS or let scripts/build-kubebins.sh build it: {reason}"
    complete = folder is not None and all((folder / name).exists() for name in _BINARIES)
    return require_binary(folder if complete else None, "kube-apiserver (with etcd)", hint)


class ApiError(AssertionError):
    """The API server refused a request; carries its status code and Status message."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the API server said about one object of a dry run."""

    ref: str  #: kind/namespace/name
    status: int
    message: str  #: the refusal's message; empty when accepted
    warnings: str  #: the response's Warning headers (deprecations, Pod Security); empty if none

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class Timings:
    """Seconds from launching each process until it answered ready."""

    etcd: float
    apiserver: float


class ControlPlane:
    """etcd and kube-apiserver as child processes, each in a process group of its own."""

    def __init__(self, bins: Path, workdir: Path) -> None:
        self.bins = bins
        self.workdir = workdir
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = workdir / "kubeconfig"
        self.timings: Timings | None = None
        self._etcd_port = free_port()
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._pki = workdir / "pki"

    def start(self) -> None:
        """Start etcd, then kube-apiserver; return once ``/readyz`` answers 200."""
        pki.write(self._pki)
        started = time.monotonic()
        etcd = self._launch("etcd", self._etcd_command())
        self._wait("etcd", etcd, self._etcd_healthy)
        etcd_ready = time.monotonic()
        apiserver = self._launch("kube-apiserver", self._apiserver_command())
        self._wait("kube-apiserver", apiserver, self._apiserver_ready)
        self.timings = Timings(etcd_ready - started, time.monotonic() - etcd_ready)
        self._write_kubeconfig()

    def stop(self) -> None:
        """SIGTERM each process group (the API server first), SIGKILL what lingers."""
        for _, process in reversed(self._processes):
            _end(process)
        self._processes.clear()

    def session(self) -> requests.Session:
        """A ``requests`` session that is the cluster admin."""
        session = requests.Session()
        # Else REQUESTS_CA_BUNDLE (or a proxy) from the environment overrides ``verify``.
        session.trust_env = False
        session.verify = str(self._pki / "ca.crt")
        session.cert = (str(self._pki / "admin.crt"), str(self._pki / "admin.key"))
        return session

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _etcd_command(self) -> list[str]:
        client = f"http://127.0.0.1:{self._etcd_port}"
        peer = f"http://127.0.0.1:{free_port()}"
        return [
            str(self.bins / "etcd"),
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync=true",
        ]

    def _apiserver_command(self) -> list[str]:
        certs = self._pki
        return [
            str(self.bins / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self._etcd_port}",
            f"--cert-dir={certs}",
            f"--tls-cert-file={certs / 'apiserver.crt'}",
            f"--tls-private-key-file={certs / 'apiserver.key'}",
            f"--client-ca-file={certs / 'ca.crt'}",
            f"--secure-port={self.port}",
            "--bind-address=127.0.0.1",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            "--disable-admission-plugins=ServiceAccount",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={self.url}/",
            f"--service-account-key-file={certs / 'sa.pub'}",
            f"--service-account-signing-key-file={certs / 'sa.key'}",
        ]

    def _launch(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._processes.append((name, process))
        return process

    def _wait(self, name: str, process: subprocess.Popen[bytes], ready: Callable[[], bool]) -> None:
        try:
            wait_until(
                lambda: process.poll() is not None or ready(),
                _START_TIMEOUT,
                f"{name} to become ready",
                interval=0.2,
            )
        except AssertionError as timeout:
            raise AssertionError(f"{timeout}; its log ends:\n{self._tail(name)}") from None
        if process.poll() is not None:
            raise AssertionError(
                f"{name} exited at start ({process.returncode}); its log ends:\n{self._tail(name)}"
            )

    def _tail(self, name: str) -> str:
        return "\n".join(self.log(name).splitlines()[-30:])

    def _etcd_healthy(self) -> bool:
        url = f"http://127.0.0.1:{self._etcd_port}/health"
        try:
            with requests.Session() as session:
                session.trust_env = False
                answer = session.get(url, timeout=1)
        except requests.RequestException:
            return False
        return answer.ok and answer.json().get("health") == "true"

    def _apiserver_ready(self) -> bool:
        try:
            with self.session() as session:
                return session.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _write_kubeconfig(self) -> None:
        def data(name: str) -> str:
            return base64.b64encode((self._pki / name).read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": data("ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": data("admin.crt"),
                        "client-key-data": data("admin.key"),
                    },
                }
            ],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
            "current-context": "test",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))


class Kube:
    """The admin's view of a :class:`ControlPlane`, defaulting to one namespace."""

    def __init__(self, plane: ControlPlane, namespace: str = "default") -> None:
        self.url = plane.url
        self.kubeconfig = plane.kubeconfig
        self.namespace = namespace
        self._session = plane.session()
        self._resources: dict[str, dict[str, tuple[str, bool]]] = {}

    def close(self) -> None:
        self._session.close()

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> str:
        """Create (or update) the namespace ``name``; returns the name."""
        metadata: dict[str, Any] = {"name": name, "labels": dict(labels or {})}
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata})
        return name

    def apply(self, manifests: Manifests) -> list[dict[str, Any]]:
        """Server-side apply each object (a dict, several, or YAML text); returns what is stored.

        An object without a namespace lands in :attr:`namespace` if its kind is namespaced. A
        CustomResourceDefinition is waited for until it is established, so its resources can
        be used at once. Raises :class:`ApiError` on the first refusal.
        """
        stored = []
        for manifest in documents(manifests):
            answer = self._apply(manifest, dry_run=False)
            if not answer.ok:
                raise self._error(answer)
            stored.append(answer.json())
            if manifest["kind"] == "CustomResourceDefinition":
                self._wait_established(manifest["metadata"]["name"])
        return stored

    def dry_run(self, manifests: Manifests) -> list[Verdict]:
        """Submit each object as a server-side apply with ``dryRun=All``: validation, defaulting
        and admission run and nothing is stored. Returns one :class:`Verdict` per object."""
        verdicts = []
        for manifest in documents(manifests):
            answer = self._apply(manifest, dry_run=True)
            verdicts.append(
                Verdict(
                    ref=_ref(manifest),
                    status=answer.status_code,
                    message="" if answer.ok else _message(answer),
                    warnings=answer.headers.get("Warning", ""),
                )
            )
        return verdicts

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """POST one object, e.g. a SubjectAccessReview, which cannot be applied."""
        path = self._collection(manifest)
        answer = self._session.post(f"{self.url}{path}", json=manifest, timeout=30)
        if not answer.ok:
            raise self._error(answer)
        return dict(answer.json())

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any]:
        """Read one object; raises :class:`ApiError` (404) when there is none."""
        metadata = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
        manifest = {"apiVersion": api_version, "kind": kind, "metadata": metadata}
        path = f"{self._collection(manifest)}/{name}"
        answer = self._session.get(f"{self.url}{path}", timeout=30)
        if not answer.ok:
            raise self._error(answer)
        return dict(answer.json())

    def merge_patch_status(self, api_version: str, kind: str, name: str, patch: str) -> str:
        """Merge-patch the status subresource of ``name`` in :attr:`namespace` with the JSON
        text ``patch``; returns the stored object as text (it may be too deep to parse)."""
        manifest = {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}}
        answer = self._session.patch(
            f"{self.url}{self._collection(manifest)}/{name}/status",
            data=patch,
            headers={"Content-Type": "application/merge-patch+json"},
            timeout=30,
        )
        if not answer.ok:
            raise self._error(answer)
        return answer.text

    def delete(self, api_version: str, kind: str, name: str) -> None:
        """Delete one object of :attr:`namespace` (or a cluster-scoped one); finalizers may
        keep it a while, marked with a deletionTimestamp."""
        manifest = {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}}
        answer = self._session.delete(f"{self.url}{self._collection(manifest)}/{name}", timeout=30)
        if not answer.ok:
            raise self._error(answer)

    def exists(self, api_version: str, kind: str, name: str) -> bool:
        """Whether the object ``name`` of :attr:`namespace` (or cluster-scoped) exists."""
        try:
            self.get(api_version, kind, name, self.namespace)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def _apply(self, manifest: Mapping[str, Any], *, dry_run: bool) -> requests.Response:
        path = f"{self._collection(manifest)}/{manifest['metadata']['name']}"
        params = {"fieldManager": _FIELD_MANAGER, "force": "true", "fieldValidation": "Strict"}
        if dry_run:
            params["dryRun"] = "All"
        return self._session.patch(
            f"{self.url}{path}",
            params=params,
            data=json.dumps(manifest),
            headers={"Content-Type": "application/apply-patch+yaml"},
            timeout=30,
        )

    def _collection(self, manifest: Mapping[str, Any]) -> str:
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        plural, namespaced = self._resource(api_version, kind)
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        if not namespaced:
            return f"{base}/{plural}"
        namespace = manifest.get("metadata", {}).get("namespace") or self.namespace
        return f"{base}/namespaces/{namespace}/{plural}"

    def _resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural, namespaced) of ``kind`` from discovery; waits a little for a group that a
        CRD has just added."""
        if kind not in self._resources.get(api_version, {}):
            wait_until(
                lambda: kind in self._discover(api_version),
                30,
                f"the API server to serve {kind} in {api_version}",
                interval=0.2,
            )
        return self._resources[api_version][kind]

    def _discover(self, api_version: str) -> dict[str, tuple[str, bool]]:
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        answer = self._session.get(f"{self.url}{base}", timeout=30)
        found = {
            resource["kind"]: (resource["name"], bool(resource["namespaced"]))
            for resource in (answer.json().get("resources", []) if answer.ok else [])
            if "/" not in resource["name"]  # subresources (status, scale) share the kind
        }
        self._resources[api_version] = found
        return found

    def _wait_established(self, name: str) -> None:
        def established() -> bool:
            crd = self.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
            conditions = (crd.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        wait_until(established, 30, f"CRD {name} to be established", interval=0.1)

    @staticmethod
    def _error(answer: requests.Response) -> ApiError:
        return ApiError(
            answer.request.method or "",
            answer.request.path_url,
            answer.status_code,
            _message(answer),
        )


def documents(manifests: Manifests) -> list[dict[str, Any]]:
    """Objects from a dict, an iterable of dicts, or YAML text (empty documents dropped)."""
    if isinstance(manifests, str):
        return [dict(doc) for doc in yaml.safe_load_all(manifests) if doc]
    if isinstance(manifests, Mapping):
        return [dict(manifests)]
    return [dict(manifest) for manifest in manifests]


def _ref(manifest: Mapping[str, Any]) -> str:
    metadata = manifest.get("metadata", {})
    scope = f"{metadata['namespace']}/" if metadata.get("namespace") else ""
    return f"{manifest['kind']}/{scope}{metadata.get('name')}"


def _message(answer: requests.Response) -> str:
    try:
        return str(answer.json().get("message", answer.text))
    except ValueError:
        return answer.text


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        stop_group(process, timeout=15)
