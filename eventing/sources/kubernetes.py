"""Subscriptions as Kubernetes custom resources: the API client, a watched cache, and a reader.

The kubernetes source is the manifest folder's twin: :class:`KubernetesReader` has the same
``read() -> (Snapshot, changed)`` as :class:`~eventing.sources.manifests.DirectoryReader`, so the
manager reconciles, and the proxy answers ``/subscribed``, the same way from either. Objects
come from a :class:`SubscriptionCache` (list, then watch from the list's resourceVersion, as an
informer does; the manager) or a :class:`SubscriptionLister` (a list at most every few seconds;
the proxy, whose requests are rare and whose worker processes should hold no threads).

We use the official client rather than kopf: the manager already is a level-triggered loop
over a whole snapshot (the folder source), and needs from Kubernetes only a current list of
objects plus status, finalizer and lease writes. kopf would bring its own event loop ownership,
per-object handlers and annotations on every object, none of which fits that loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from eventing.errors import InvalidSubscription
from eventing.settings import SourceSettings
from eventing.sources.manifests import Entry, Parse, Snapshot, validated
from eventing.subscriptions.model import Subscription, key_of

logger = logging.getLogger(__name__)

GROUP = "eventing.kyma-project.io"
VERSION = "v1alpha2"
PLURAL = "subscriptions"
FINALIZER = "eventing.kyma-project.io"  #: Kyma's finalizer name: consumers go before the object

_WATCH_SECONDS = 60  # a watch is re-opened from its resourceVersion this often
_RELIST_EVERY = 300.0  # a full list now and then repairs anything a watch might have missed
_RETRY_PAUSE = 1.0
_SERVICE_TTL = 10.0
_HTTP_GONE = 410


def api_client(settings: SourceSettings) -> Any:
    """A client for the configured cluster: a kubeconfig file, else the pod's service account,
    else ``~/.kube/config``."""
    if settings.kubeconfig:
        return config.new_client_from_config(config_file=settings.kubeconfig)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        return config.new_client_from_config()
    return client.ApiClient()


class SubscriptionCache:
    """Every Subscription object, kept current by one watching thread per namespace.

    A watch resumes from the last resourceVersion it saw; one that expired (410 Gone), or any
    API error, leads to a fresh list, after a pause while the API server is unreachable.
    """

    def __init__(self, api: Any, namespaces: tuple[str, ...]) -> None:
        self._api = client.CustomObjectsApi(api)
        self._scopes: tuple[str | None, ...] = namespaces or (None,)
        self._objects: dict[str | None, dict[str, dict[str, Any]]] = {}
        self._version = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._watches: list[watch.Watch] = []

    def start(self) -> None:
        for scope in self._scopes:
            threading.Thread(
                target=self._run, args=(scope,), name=f"watch-{scope or 'all'}", daemon=True
            ).start()

    def stop(self) -> None:
        self._stopped.set()
        for stream in list(self._watches):
            stream.stop()

    def objects(self) -> tuple[int, list[dict[str, Any]]]:
        """A version that changes with any object (0 until every namespace was listed), and
        the objects."""
        with self._lock:
            if len(self._objects) < len(self._scopes):
                return 0, []
            return self._version, [o for scope in self._objects.values() for o in scope.values()]

    def _run(self, scope: str | None) -> None:
        while not self._stopped.is_set():
            try:
                version = self._list(scope)
                self._watch(scope, version)
            except ApiException as exc:
                if exc.status != _HTTP_GONE:
                    logger.warning("watching subscriptions failed: %s %s", exc.status, exc.reason)
                    self._stopped.wait(_RETRY_PAUSE)
            except Exception as exc:  # the API server is down or unreachable: retry, forever
                logger.warning("watching subscriptions failed: %s", exc)
                self._stopped.wait(_RETRY_PAUSE)

    def _list(self, scope: str | None) -> str:
        if scope is None:
            listed = self._api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        else:
            listed = self._api.list_namespaced_custom_object(GROUP, VERSION, scope, PLURAL)
        with self._lock:
            self._objects[scope] = {key_of(item): item for item in listed.get("items", [])}
            self._version += 1
        return str(listed["metadata"]["resourceVersion"])

    def _watch(self, scope: str | None, version: str) -> None:
        stream = watch.Watch()
        self._watches.append(stream)
        relist_at = time.monotonic() + _RELIST_EVERY
        try:
            while not self._stopped.is_set() and time.monotonic() < relist_at:
                if scope is None:
                    call: Callable[..., Any] = self._api.list_cluster_custom_object
                    arguments: tuple[str, ...] = (GROUP, VERSION, PLURAL)
                else:
                    call = self._api.list_namespaced_custom_object
                    arguments = (GROUP, VERSION, scope, PLURAL)
                for event in stream.stream(
                    call,
                    *arguments,
                    resource_version=version,
                    timeout_seconds=_WATCH_SECONDS,
                    allow_watch_bookmarks=True,
                ):
                    kind, item = event["type"], event["object"]
                    version = item["metadata"]["resourceVersion"]
                    if kind == "BOOKMARK":
                        continue
                    with self._lock:
                        if kind == "DELETED":
                            self._objects[scope].pop(key_of(item), None)
                        else:
                            self._objects[scope][key_of(item)] = item
                        self._version += 1
        finally:
            self._watches.remove(stream)


class SubscriptionLister:
    """Every Subscription object, listed again when the last list is ``ttl`` seconds old."""

    def __init__(self, api: Any, namespaces: tuple[str, ...], ttl: float = 5.0) -> None:
        self._api = client.CustomObjectsApi(api)
        self._namespaces = namespaces
        self._ttl = ttl
        self._listed_at = -ttl
        self._items: list[dict[str, Any]] = []
        self._version = 0

    def objects(self) -> tuple[int, list[dict[str, Any]]]:
        if time.monotonic() - self._listed_at >= self._ttl:
            items: list[dict[str, Any]] = []
            if not self._namespaces:
                items = self._api.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
            for namespace in self._namespaces:
                items += self._api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)[
                    "items"
                ]
            self._items, self._listed_at = items, time.monotonic()
            self._version += 1
        return self._version, self._items


class KubernetesReader:
    """Subscription objects into a :class:`Snapshot`, as the folder reader makes one.

    Objects being deleted are left out (their consumers go, then the manager removes the
    finalizer); ``deleting`` lists them. With the sink rule on, a sink must be the cluster-local
    address of a Service in the subscription's own namespace, and the Service must exist.
    """

    def __init__(
        self,
        objects: SubscriptionCache | SubscriptionLister,
        api: Any,
        parse: Parse,
        *,
        sink_rule: bool,
    ) -> None:
        self._objects = objects
        self.api = api
        self._core = client.CoreV1Api(api)
        self._parse = parse  #: from_manifest with the settings' defaults bound
        self._sink_rule = sink_rule
        self._services: dict[tuple[str, str], tuple[float, bool]] = {}
        self._fingerprint: tuple[Any, ...] | None = None
        self._snapshot = Snapshot(())
        self.deleting: tuple[dict[str, Any], ...] = ()  #: objects waiting for their finalizer
        self.current: dict[str, dict[str, Any]] = {}  #: the latest object of each key

    @property
    def ready(self) -> bool:
        """Whether the objects were listed: before that an empty snapshot means "unknown", and
        reconciling it would delete every consumer."""
        return self._objects.objects()[0] > 0

    def read(self) -> tuple[Snapshot, bool]:
        """The current snapshot, and whether it differs from the previous read's."""
        version, items = self._objects.objects()
        live = [item for item in items if not item["metadata"].get("deletionTimestamp")]
        missing = frozenset(self._missing_services(live)) if self._sink_rule else frozenset()
        fingerprint = (version, missing)
        if fingerprint == self._fingerprint:
            return self._snapshot, False
        self.current = {key_of(item): item for item in items}
        self.deleting = tuple(item for item in items if item["metadata"].get("deletionTimestamp"))
        entries = tuple(self._entry(item, missing) for item in sorted(live, key=key_of))
        self._fingerprint, self._snapshot = fingerprint, Snapshot(entries)
        return self._snapshot, True

    def _entry(self, item: dict[str, Any], missing: frozenset[str]) -> Entry:
        key = key_of(item)
        subscription = validated(self._parse, item)
        if isinstance(subscription, InvalidSubscription):
            return subscription
        if self._sink_rule:
            problem = sink_rule_problem(subscription)
            if problem is None and key in missing:
                host = urlsplit(subscription.sink).hostname or ""
                service, namespace = host.split(".")[:2]
                problem = f"service {service}.{namespace} not found in the cluster"
            if problem is not None:
                return InvalidSubscription(key, [f"spec.sink: Sink validation failed: {problem}"])
        return subscription

    def _missing_services(self, items: list[dict[str, Any]]) -> set[str]:
        """Keys of the subscriptions whose sink Service does not exist (cached for a while)."""
        missing: set[str] = set()
        now = time.monotonic()
        for item in items:
            sink = (item.get("spec") or {}).get("sink")
            if not isinstance(sink, str):
                continue
            service = _service_of(sink)
            if service is None:
                continue
            name, namespace = service
            checked = self._services.get(service)
            if checked is None or now - checked[0] > _SERVICE_TTL:
                checked = (now, self._service_exists(namespace, name))
                self._services[service] = checked
            if not checked[1]:
                missing.add(key_of(item))
        return missing

    def _service_exists(self, namespace: str, name: str) -> bool:
        try:
            self._core.read_namespaced_service(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            logger.warning("cannot check Service %s.%s: %s", name, namespace, exc.reason)
        except Exception as exc:  # API server unreachable: keep delivering, check again later
            logger.warning("cannot check Service %s.%s: %s", name, namespace, exc)
        return True


def sink_rule_problem(subscription: Subscription) -> str | None:
    """Why ``subscription``'s sink breaks Kyma's rule (cluster-local, own namespace), if it does."""
    host = urlsplit(subscription.sink).hostname or ""
    if not host.endswith("svc.cluster.local"):
        return f"sink host {host!r} must end with svc.cluster.local"
    labels = host.split(".")
    if len(labels) != 5:
        return f"sink host {host!r} must be <service>.<namespace>.svc.cluster.local"
    if labels[1] != subscription.namespace:
        return (
            f"sink namespace {labels[1]!r} must be the subscription's namespace"
            f" {subscription.namespace!r}"
        )
    return None


def _service_of(sink: str) -> tuple[str, str] | None:
    try:
        labels = (urlsplit(sink).hostname or "").split(".")
    except ValueError:
        return None
    if len(labels) == 5 and labels[2:] == ["svc", "cluster", "local"]:
        return labels[0], labels[1]
    return None
